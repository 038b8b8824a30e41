//! Host bindings for the `berth:connector` worlds. The 0.2.0 world is generated at the
//! top level and calls the exports every world has (manifest, check, pull, push,
//! webhook) for components of every version: those exports and their types did not
//! change, and component values are checked by structure. `v0_1` `v0_3` and `v0_4` hold the other
//! worlds, whose imports the host provides too (`compat_v0_1.rs`, `compat_v0_3.rs`, `compat_v0_4.rs`); the
//! exports new in 0.3.0 (credentials and OAuth) are called through `v0_3` (for 0.3.0 and
//! 0.4.0 components alike), the one new in 0.4.0 (listings) through `v0_4`.

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

pub mod v0_3 {
    wasmtime::component::bindgen!({
        world: "connector",
        path: "../../wit/0.3.0",
        imports: {
            "berth:connector/http.send": async,
            "berth:connector/http.send-costed": async,
        },
        exports: { default: async },
    });
}

pub mod v0_4 {
    wasmtime::component::bindgen!({
        world: "connector",
        path: "../../wit/0.4.0",
        imports: {
            "berth:connector/http.send": async,
            "berth:connector/http.send-costed": async,
        },
        exports: { default: async },
    });
}
