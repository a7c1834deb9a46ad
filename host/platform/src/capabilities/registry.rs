//! How the capabilities are registered: `capabilities/mod.rs` lists them,
//! one line each, in a `capabilities!` invocation. The macro declares each
//! capability's module and writes, for the list:
//!
//! - [`Grants`]: what one component is granted, parsed from its entry;
//! - [`Backends`]: every backend, built by [`Backends::build`], the one
//!   function `spindle up` and the convert worker both call;
//! - [`InstanceStates`]: what one instance holds, and the [`HasState`]
//!   impls that let each capability's host functions find theirs;
//! - [`add_to_linker`], readiness checks and the grant checks deploys make.
//!
//! Adding a capability is a new folder with an `impl Capability` and one
//! line in that list; nothing else names it.

use super::capability::{GrantEntry, GrantError};
use super::{CONFIG_SECTIONS, GRANT_KEYS, Grants, InstanceStates};
use crate::manifest::{Manifest, ManifestError};
use anyhow::Context;
use std::collections::BTreeMap;
use std::time::Duration;
use wasmtime::component::ResourceTable;

/// Store data that carries the capabilities' instance states (the runtime's
/// per-instance state).
pub trait CapabilityHost: Send + 'static {
    fn capability_states(&mut self) -> (&mut InstanceStates, &mut ResourceTable);
}

/// One backend check, for `/readyz`.
pub struct Check {
    /// The capability, e.g. `spindle:blobs`.
    pub name: &'static str,
    pub result: anyhow::Result<()>,
}

/// How long a readiness check may take; the Kubernetes probes allow 3 s.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs one backend check with a 2 s bound, naming the backend.
pub async fn probe<E>(what: &str, check: impl Future<Output = Result<(), E>>) -> anyhow::Result<()>
where
    E: Into<anyhow::Error>,
{
    tokio::time::timeout(PROBE_TIMEOUT, check)
        .await
        .with_context(|| format!("{what} did not answer within 2s"))?
        .map_err(Into::into)
        .with_context(|| format!("{what} is not answering"))
}

macro_rules! capabilities {
    ($($field:ident: $cap:ty),* $(,)?) => {
        $(pub mod $field;)*

        /// What one component is granted, capability by capability.
        #[derive(Clone)]
        pub struct Grants {
            $(pub $field: <$cap as $crate::capabilities::Capability>::Grant,)*
        }

        /// Every capability's backend, shared by all components.
        #[derive(Clone)]
        pub struct Backends {
            $(pub $field: <$cap as $crate::capabilities::Capability>::Backend,)*
        }

        /// What one instance holds, capability by capability.
        #[derive(Clone)]
        pub struct InstanceStates {
            $($field: <$cap as $crate::capabilities::Capability>::State,)*
        }

        $(
            impl<T: $crate::capabilities::registry::CapabilityHost> $crate::capabilities::capability::HasState<$cap> for T {
                fn view(&mut self) -> $crate::capabilities::capability::StateView<'_, $cap> {
                    let (states, table) = self.capability_states();
                    $crate::capabilities::capability::StateView { state: &mut states.$field, table }
                }
            }
        )*

        /// Every `[component.ID]` key some capability owns.
        pub const GRANT_KEYS: &[&[&str]] = &[$(<$cap as $crate::capabilities::Capability>::GRANT_KEYS,)*];

        /// Every runtime-config section some capability owns.
        pub(crate) const CONFIG_SECTIONS: &[Option<&str>] = &[$(<$cap as $crate::capabilities::Capability>::CONFIG_SECTION,)*];

        impl Grants {
            fn parse_entry(entry: &$crate::capabilities::capability::GrantEntry<'_>) -> Result<Self, $crate::capabilities::capability::GrantError> {
                Ok(Grants { $($field: <$cap as $crate::capabilities::Capability>::grant(entry)?,)* })
            }

            /// The names of the capabilities this grants any use of.
            pub fn granted(&self) -> Vec<&'static str> {
                let mut names = Vec::new();
                $(if <$cap as $crate::capabilities::Capability>::is_granted(&self.$field) {
                    names.push(<$cap as $crate::capabilities::Capability>::NAME);
                })*
                names
            }

            /// The imports among `imports` this does not grant, each with
            /// the manifest line that would grant it.
            pub fn ungranted(&self, imports: &[String]) -> Vec<String> {
                imports
                    .iter()
                    .filter_map(|import| {
                        let need = None
                            $(.or_else(|| <$cap as $crate::capabilities::Capability>::missing_grant(import, &self.$field)))*;
                        need.map(|need| format!("{import} (grant: {need})"))
                    })
                    .collect()
            }
        }

        impl Backends {
            /// Builds every backend from the runtime config, embedded
            /// defaults where it has no section.
            pub async fn build(env: &$crate::capabilities::capability::BackendEnv<'_>) -> anyhow::Result<Self> {
                registry::check_sections(env.runtime_config)?;
                Ok(Backends { $($field: <$cap as $crate::capabilities::Capability>::backend(env).await?,)* })
            }

            /// The state every instance of component `id` starts from.
            pub fn prepare(&self, grants: &Grants, id: &str) -> InstanceStates {
                InstanceStates {
                    $($field: <$cap as $crate::capabilities::Capability>::prepare(&self.$field, &grants.$field, id),)*
                }
            }

            /// One line per backend, for the start-up summary.
            pub fn describe(&self) -> Vec<(&'static str, String)> {
                let mut lines = Vec::new();
                $(if let Some(line) = <$cap as $crate::capabilities::Capability>::describe(&self.$field) {
                    lines.push((<$cap as $crate::capabilities::Capability>::NAME, line));
                })*
                lines
            }

            /// Checks the backends of the capabilities named in `which`,
            /// all at once, each bounded by [`registry::probe`].
            pub async fn check(&self, which: &[&'static str]) -> Vec<registry::Check> {
                let ($($field,)*) = tokio::join!($(
                    async {
                        let name = <$cap as $crate::capabilities::Capability>::NAME;
                        which.contains(&name).then_some(())?;
                        Some(registry::Check {
                            name,
                            result: registry::probe(
                                <$cap as $crate::capabilities::Capability>::BACKEND_NAME,
                                <$cap as $crate::capabilities::Capability>::ready(&self.$field),
                            ).await,
                        })
                    },
                )*);
                [$($field,)*].into_iter().flatten().collect()
            }

            /// The names of every capability whose backend can be checked.
            pub fn names() -> Vec<&'static str> {
                vec![$(<$cap as $crate::capabilities::Capability>::NAME,)*]
            }
        }

        /// Links every capability's imports.
        pub fn add_to_linker<T: registry::CapabilityHost>(linker: &mut wasmtime::component::Linker<T>) -> wasmtime::Result<()> {
            $(<$cap as $crate::capabilities::Capability>::add_to_linker(linker)?;)*
            Ok(())
        }
    };
}

pub(crate) use capabilities;

/// The `[component.ID]` keys the manifest itself reads.
const MANIFEST_KEYS: &[&str] = &[
    "source",
    "description",
    "build",
    "tool",
    "targets",
    "profile",
    "dependencies",
    "dependencies_inherit_configuration",
    "ai_models",
];

/// Spin's grant keys whose capability this build does not have: ignoring
/// one would change what the component can do, so it is refused by name.
const SPIN_KEYS_NOT_SERVED: &[&str] = &["key_value_stores", "sqlite_databases"];

/// Parses and validates every component's grants.
pub fn grants(manifest: &Manifest) -> Result<BTreeMap<String, Grants>, ManifestError> {
    let known: Vec<&str> = GRANT_KEYS
        .iter()
        .flat_map(|keys| keys.iter().copied())
        .collect();
    let all_keys: Vec<&str> = MANIFEST_KEYS
        .iter()
        .copied()
        .chain(known.iter().copied())
        .collect();
    let mut all = BTreeMap::new();
    for (id, component) in &manifest.components {
        let err = |e: GrantError| e.in_component(manifest, id);
        if let Some(key) = component
            .grants
            .keys()
            .find(|k| SPIN_KEYS_NOT_SERVED.contains(&k.as_str()) && !known.contains(&k.as_str()))
        {
            return Err(err(GrantError::new(
                key.clone(),
                format!(
                    "`{key}` is a Spin key whose capability this build of Spindle does not have"
                ),
                "remove it, or run a build of Spindle with that capability",
            )));
        }
        if let Some(key) = component
            .grants
            .keys()
            .find(|k| !known.contains(&k.as_str()))
        {
            return Err(err(GrantError::new(
                key.clone(),
                format!("unknown key `{key}`"),
                match crate::manifest::closest(key, &all_keys) {
                    Some(near) => format!(
                        "did you mean `{near}`? (valid keys: {})",
                        all_keys.join(", ")
                    ),
                    None => format!("use one of: {}", all_keys.join(", ")),
                },
            )));
        }
        let entry = GrantEntry {
            id,
            keys: &component.grants,
            manifest,
        };
        all.insert(id.clone(), Grants::parse_entry(&entry).map_err(err)?);
    }
    Ok(all)
}

/// Refuses runtime-config sections no capability owns (a typo such as
/// `[mysqll]` would otherwise silently select the embedded default).
pub(crate) fn check_sections(config: &crate::runtime_config::RuntimeConfig) -> anyhow::Result<()> {
    let known: Vec<&str> = CONFIG_SECTIONS.iter().flatten().copied().collect();
    if let Some(name) = config
        .sections
        .keys()
        .find(|k| !known.contains(&k.as_str()))
    {
        anyhow::bail!(
            "runtime config: unknown section [{name}]; the sections are: limits, convert, {}",
            known.join(", ")
        );
    }
    Ok(())
}

impl super::Backends {
    /// Sends components' `http://NAME.spin.internal` calls to `dispatch`
    /// (the HTTP trigger), once it exists.
    pub fn route_internal_calls(
        &self,
        dispatch: std::sync::Weak<dyn super::outbound_http::InternalDispatch>,
    ) {
        let _ = self.outbound_http.internal.set(dispatch);
    }
}

impl InstanceStates {
    /// The `wasi:http` hooks: outbound HTTP's allow-list and chaining.
    pub fn http_hooks(&mut self) -> &mut dyn wasmtime_wasi_http::WasiHttpHooks {
        &mut self.outbound_http
    }

    /// The component's environment and files, for its WASI context.
    pub fn wasi(&self) -> &super::wasi::WasiState {
        &self.wasi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads a manifest and its grants, as `spindle up` does.
    fn load_str(text: &str) -> Result<Manifest, ManifestError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
        let path = dir.path().join("spin.toml");
        std::fs::write(&path, text).unwrap();
        let manifest = Manifest::load(&path)?;
        grants(&manifest)?;
        Ok(manifest)
    }

    const HEAD: &str = "spin_manifest_version = 2\n[application]\nname = \"t\"\n";

    #[test]
    fn platform_names_cannot_be_granted() {
        let cases = [
            (
                "blob_buckets = [\"spindle-deploys\"]",
                "component.c.blob_buckets",
            ),
            (
                "publish_queues = [\"Spindle.deploys\"]",
                "component.c.publish_queues",
            ),
        ];
        for (grant, key) in cases {
            let text = format!("{HEAD}[component.c]\nsource = \"a.wasm\"\n{grant}\n");
            let e = load_str(&text).unwrap_err();
            assert_eq!(e.key, key);
            assert!(
                e.problem.contains("reserved for the platform"),
                "{}",
                e.problem
            );
        }
        let trigger =
            format!("{HEAD}[[trigger.amqp]]\nqueue = \"spindle-events\"\nworker = \"convert\"\n");
        assert_eq!(load_str(&trigger).unwrap_err().key, "trigger.amqp[0].queue");
    }

    #[test]
    fn undefined_template_reference_is_reported() {
        let e = load_str(&format!(
            "{HEAD}[component.a]\nsource = \"a.wasm\"\n[component.a.variables]\nk = \"{{{{ nope }}}}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("component.a.variables.k"), "{e}");
        assert!(e.contains("add `nope` under [variables]"), "{e}");
    }

    #[test]
    fn unknown_grant_keys_are_named() {
        let e = load_str(&format!(
            "{HEAD}[component.a]\nsource = \"a.wasm\"\nblob_bucket = [\"x\"]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("component.a.blob_bucket"), "{e}");
        assert!(e.contains("blob_buckets"), "{e}");
    }

    #[test]
    fn ungranted_imports_name_each_grant() {
        let manifest = load_str(&format!(
            "{HEAD}[component.a]\nsource = \"a.wasm\"\nallowed_outbound_hosts = [\"mysql://db:3306\"]\n"
        ))
        .unwrap();
        let grants = grants(&manifest).unwrap().remove("a").unwrap();
        let imports = [
            "wasi:http/types@0.2.3".to_string(),
            "spin:mysql/mysql@2.0.0".to_string(),
            "spindle:blobs/store@0.1.0".to_string(),
            "spindle:queue/publisher@0.1.0".to_string(),
            "spindle:mail/mailer@0.1.0".to_string(),
        ];
        let missing = grants.ungranted(&imports);
        assert_eq!(
            missing,
            [
                "spindle:blobs/store@0.1.0 (grant: blob_buckets = [\"BUCKET\"])",
                "spindle:queue/publisher@0.1.0 (grant: publish_queues = [\"QUEUE\"])",
                "spindle:mail/mailer@0.1.0 (grant: send_mail = true)",
            ]
        );
    }

    #[test]
    fn unknown_section_is_an_error() {
        let config: crate::runtime_config::RuntimeConfig =
            toml::from_str("[mysqll]\nurl = \"x\"").unwrap();
        assert!(check_sections(&config).is_err());
        let config: crate::runtime_config::RuntimeConfig =
            toml::from_str("[mysql]\nurl = \"x\"").unwrap();
        assert!(check_sections(&config).is_ok());
    }
}
