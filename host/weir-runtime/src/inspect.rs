//! `weir component check`: what a `.wasm` imports and exports, and which worlds it satisfies.

use crate::component::interface_names;
use crate::engine::Runtime;
use crate::manifest::WorldKind;

/// Whether a component links as one world, and why not.
#[derive(Debug, Clone)]
pub struct WorldCheck {
    /// The world tried.
    pub world: WorldKind,
    /// `None` when it links and exports the world; the reason otherwise.
    pub error: Option<String>,
}

/// The result of inspecting a component.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// SHA-256 of the wasm, hex.
    pub hash: String,
    /// Import names.
    pub imports: Vec<String>,
    /// Export names.
    pub exports: Vec<String>,
    /// One check per world.
    pub worlds: Vec<WorldCheck>,
}

impl Runtime {
    /// Compile `wasm` and check it against every world without instantiating it.
    pub fn inspect(&self, wasm: &[u8]) -> Result<Inspection, String> {
        let (component, hash) = self.compile(wasm).map_err(|e| format!("{e:#}"))?;
        let (imports, exports) = interface_names(&component, self.engine());
        let worlds = [WorldKind::Router, WorldKind::Pricing, WorldKind::Pipeline]
            .into_iter()
            .map(|world| WorldCheck {
                world,
                error: crate::component::check_world(self, &component, world).err(),
            })
            .collect();
        Ok(Inspection {
            hash,
            imports,
            exports,
            worlds,
        })
    }
}
