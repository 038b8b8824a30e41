//! Host bindings for the `berth:connector` worlds. The current world (0.2.0) is
//! generated at the top level and used for every call; `v0_1` holds the 0.1.0 world, whose
//! imports the host still provides (see `compat_v0_1.rs`) so components built for it keep
//! loading. Exports and `types` did not change between them, and component values are
//! checked by structure, so one set of export bindings calls both.

wasmtime::component::bindgen!({
    world: "connector",
    path: "../../wit/0.2.0",
    imports: {
        // The only import that waits on the network; the rest answer at once.
        "berth:connector/http.send": async,
    },
    exports: { default: async },
    // Shadow runs compare outputs field by field through their JSON form.
    additional_derives: [serde::Serialize],
});

pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "connector",
        path: "../../wit/0.1.0",
        imports: {
            "berth:connector/http.send": async,
        },
        exports: { default: async },
    });
}
