//! RPC endpoints plugins register (capability `rpc:register`): an endpoint name bound to
//! one of the plugin's exported functions. The server lists them and invokes one by name;
//! the host resolves the endpoint to (plugin, function) and calls through the plugin's
//! normal call path (see `Host::rpc_call`).
//!
//! - Endpoint names are unique per host: registering a name another plugin holds, or that
//!   the same generation already bound to another function, is `KEEL_ERR_RPC_ENDPOINT_TAKEN`.
//!   Registering the same binding again is a no-op (each pooled WASM instance runs init).
//! - A generation being loaded by a reload may register a name its plugin's older
//!   generation holds: the binding is staged (the old one kept for a rollback). When the new
//!   generation is published ([`RpcTable::commit`]) the endpoints of older generations it did
//!   not register again are removed; when the reload rolls back ([`RpcTable::roll_back`])
//!   its registrations are undone and the old bindings are back.
//! - Unload removes every endpoint of the plugin ([`RpcTable::forget`]).
//!
//! A lower module: imports nothing of the runtimes, the registry or the host.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::bail;
use crate::error::Result;

/// Longest endpoint name.
pub const MAX_ENDPOINT_BYTES: usize = 255;
/// Most endpoints one plugin may register.
pub const MAX_ENDPOINTS_PER_PLUGIN: usize = 1024;
/// [`Endpoint::function_id`] before the function has been resolved.
pub const UNRESOLVED: u32 = u32::MAX;

/// One registered endpoint.
#[derive(Debug)]
pub struct Endpoint {
    pub plugin: Arc<str>,
    pub function: Arc<str>,
    /// The generation that registered this binding.
    pub generation: u64,
    /// The function's id in the plugin's slot once resolved (a cache for the invoke path;
    /// [`UNRESOLVED`] before).
    pub function_id: AtomicU32,
    /// The binding this one replaced while its generation is not committed yet.
    previous: Option<Arc<Endpoint>>,
}

impl Endpoint {
    fn new(plugin: Arc<str>, function: &str, generation: u64, previous: Option<Arc<Endpoint>>) -> Endpoint {
        Endpoint {
            plugin,
            function: Arc::from(function),
            generation,
            function_id: AtomicU32::new(UNRESOLVED),
            previous,
        }
    }
}

/// An endpoint as listed: (endpoint, plugin, function).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EndpointInfo {
    pub endpoint: String,
    pub plugin: String,
    pub function: String,
}

type EndpointMap = BTreeMap<String, Arc<Endpoint>>;

/// The host's endpoints. Lookups are lock-free (one atomic load of a published map);
/// changes copy the map under a writers' lock and publish the copy.
#[derive(Default)]
pub struct RpcTable {
    map: ArcSwap<EndpointMap>,
    writers: Mutex<()>,
}

impl RpcTable {
    /// Change the map: copy, `f`, publish; writers serialised.
    fn update<R>(&self, f: impl FnOnce(&mut EndpointMap) -> Result<R>) -> Result<R> {
        let _w = self.writers.lock();
        let mut next = EndpointMap::clone(&self.map.load());
        let r = f(&mut next)?;
        self.map.store(Arc::new(next));
        Ok(r)
    }

    /// Bind `endpoint` to `function` of `plugin` for its generation `generation`.
    /// `functions`: the plugin's exported functions when known at this point (native), to
    /// refuse an unknown one at once (otherwise it is found, or not, when invoked).
    ///
    /// Errors: `KEEL_ERR_INVALID_ARGUMENT` (empty or too long endpoint name, control
    /// characters, too many endpoints), `KEEL_ERR_FUNCTION_NOT_FOUND`,
    /// `KEEL_ERR_RPC_ENDPOINT_TAKEN`.
    pub fn register(
        &self,
        plugin: &Arc<str>,
        generation: u64,
        functions: Option<&[String]>,
        endpoint: &str,
        function: &str,
    ) -> Result<()> {
        if endpoint.is_empty() || endpoint.len() > MAX_ENDPOINT_BYTES || endpoint.chars().any(char::is_control) {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "endpoint name '{}' is empty, longer than {MAX_ENDPOINT_BYTES} bytes or holds control characters",
                endpoint.escape_debug()
            );
        }
        if let Some(fns) = functions {
            if !fns.iter().any(|f| f == function) {
                bail!(
                    KEEL_ERR_FUNCTION_NOT_FOUND,
                    "plugin '{plugin}' registers endpoint '{endpoint}' for function '{}', which it does not export (it exports: {})",
                    function.escape_debug(),
                    fns.join(", ")
                );
            }
        }
        self.update(|map| Self::register_in(map, plugin, generation, endpoint, function))
    }

    fn register_in(
        map: &mut EndpointMap,
        plugin: &Arc<str>,
        generation: u64,
        endpoint: &str,
        function: &str,
    ) -> Result<()> {
        let previous = match map.get(endpoint) {
            None => None,
            Some(e) if e.plugin != *plugin => bail!(
                KEEL_ERR_RPC_ENDPOINT_TAKEN,
                "endpoint '{endpoint}' is already registered by plugin '{}'",
                e.plugin
            ),
            Some(e) if e.generation == generation => {
                if &*e.function == function {
                    return Ok(());
                }
                bail!(
                    KEEL_ERR_RPC_ENDPOINT_TAKEN,
                    "endpoint '{endpoint}' is already registered by plugin '{plugin}' for function '{}'",
                    e.function
                )
            }
            Some(e) if e.generation > generation => bail!(
                KEEL_ERR_RPC_ENDPOINT_TAKEN,
                "endpoint '{endpoint}' is registered by a newer generation of plugin '{plugin}'"
            ),
            // An older generation of the same plugin: stage the new binding.
            Some(e) => Some(e.clone()),
        };
        if previous.is_none() && map.values().filter(|e| e.plugin == *plugin).count() >= MAX_ENDPOINTS_PER_PLUGIN {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "plugin '{plugin}' already has {MAX_ENDPOINTS_PER_PLUGIN} endpoints"
            );
        }
        map.insert(
            endpoint.to_string(),
            Arc::new(Endpoint::new(plugin.clone(), function, generation, previous)),
        );
        Ok(())
    }

    /// The endpoint's binding (lock-free).
    pub fn get(&self, endpoint: &str) -> Option<Arc<Endpoint>> {
        self.map.load().get(endpoint).cloned()
    }

    /// Every endpoint, sorted by name.
    pub fn list(&self) -> Vec<EndpointInfo> {
        self.map
            .load()
            .iter()
            .map(|(k, e)| EndpointInfo {
                endpoint: k.clone(),
                plugin: e.plugin.to_string(),
                function: e.function.to_string(),
            })
            .collect()
    }

    /// Generation `generation` of `plugin` is published: its bindings become final, and
    /// endpoints only older generations registered are removed.
    pub fn commit(&self, plugin: &str, generation: u64) {
        let _ = self.update(|map| {
            map.retain(|_, e| &*e.plugin != plugin || e.generation >= generation);
            for e in map.values_mut() {
                if &*e.plugin == plugin && e.previous.is_some() {
                    *e = Arc::new(Endpoint::new(e.plugin.clone(), &e.function, e.generation, None));
                }
            }
            Ok(())
        });
    }

    /// Generation `generation` of `plugin` was not published: undo its registrations.
    pub fn roll_back(&self, plugin: &str, generation: u64) {
        let _ = self.update(|map| {
            Self::roll_back_in(map, plugin, generation);
            Ok(())
        });
    }

    fn roll_back_in(map: &mut EndpointMap, plugin: &str, generation: u64) {
        let undone: Vec<(String, Option<Arc<Endpoint>>)> = map
            .iter()
            .filter(|(_, e)| &*e.plugin == plugin && e.generation == generation)
            .map(|(k, e)| (k.clone(), e.previous.clone()))
            .collect();
        for (k, prev) in undone {
            match prev {
                Some(p) => map.insert(k, p),
                None => map.remove(&k),
            };
        }
    }

    /// Remove every endpoint of `plugin` (unload).
    pub fn forget(&self, plugin: &str) {
        let _ = self.update(|map| {
            map.retain(|_, e| &*e.plugin != plugin);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::keel_status;

    #[test]
    fn register_commit_roll_back_forget() {
        let t = RpcTable::default();
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let fns = ["f".to_string(), "g".to_string()];
        t.register(&a, 1, Some(&fns), "x", "f").unwrap();
        t.register(&a, 1, Some(&fns), "x", "f").unwrap();
        t.register(&a, 1, Some(&fns), "y", "g").unwrap();
        let e = t.register(&a, 1, Some(&fns), "x", "g").unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_RPC_ENDPOINT_TAKEN);
        let e = t.register(&b, 1, None, "x", "f").unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_RPC_ENDPOINT_TAKEN);
        let e = t.register(&a, 1, Some(&fns), "z", "nope").unwrap_err();
        assert_eq!(e.status(), keel_status::KEEL_ERR_FUNCTION_NOT_FOUND);
        // A reload that rebinds x and drops y, rolled back: as before.
        t.register(&a, 2, Some(&fns), "x", "g").unwrap();
        t.roll_back("a", 2);
        assert_eq!(&*t.get("x").unwrap().function, "f");
        assert!(t.get("y").is_some());
        // Committed: x rebound, y gone.
        t.register(&a, 3, Some(&fns), "x", "g").unwrap();
        t.commit("a", 3);
        assert_eq!(&*t.get("x").unwrap().function, "g");
        assert!(t.get("y").is_none());
        t.forget("a");
        assert!(t.list().is_empty());
    }
}
