//! Host bindings for the `berth:connector@0.1.0` world.

wasmtime::component::bindgen!({
    world: "connector",
    path: "../wit/0.1.0",
    imports: {
        // The only import that waits on the network; the rest answer at once.
        "berth:connector/http.send": async,
    },
    exports: { default: async },
});
