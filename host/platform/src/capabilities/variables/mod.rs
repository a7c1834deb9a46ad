//! `spin:variables`: application variables resolved once at start-up, and
//! the per-component view a component reads through `get`: in Spin 3's
//! `spin:variables@3.0.0`, Spin 2's `fermyon:spin/variables@2.0.0` and the
//! WASI runtime-config draft `wasi:config/store`, all three over the same
//! values.
//!
//! Providers, highest precedence first: `--variable k=v`, `SPIN_VARIABLE_<NAME>`
//! environment variables, the runtime config's `[variables]` table, the
//! manifest's `default`. Secret values never appear in logs or errors.

use crate::manifest::Manifest;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use wasmtime::component::{Accessor, HasData};

mod bindings {
    wasmtime::component::bindgen!({
        path: "src/capabilities/variables/wit",
        inline: "
            package spindle:variables-host;
            world host {
                import spin:variables/variables@3.0.0;
                import fermyon:spin/variables@2.0.0;
                import wasi:config/store@0.2.0-draft-2024-09-27;
            }
        ",
        world: "spindle:variables-host/host",
        imports: { default: trappable },
    });
}

use bindings::fermyon::spin::variables as wit2;
use bindings::spin::variables::variables::{self as wit, Error};
use bindings::wasi::config::store as wasi_config;

mod capability;
mod template;

pub use template::{TemplatePart, parse_template};

/// A resolved application variable.
#[derive(Clone)]
struct Value {
    value: String,
    secret: bool,
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.secret {
            f.write_str("\"<secret>\"")
        } else {
            write!(f, "{:?}", self.value)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VariableError {
    #[error(
        "variables.{0}: required but has no value; pass --variable {0}=VALUE, set SPIN_VARIABLE_{upper}, or add it to [variables] in the runtime config",
        upper = .0.to_uppercase()
    )]
    Missing(String),
    #[error("--variable `{0}` is not in the form NAME=VALUE")]
    BadFlag(String),
    #[error(
        "--variable `{0}` is not declared in the manifest's [variables]; declare it or fix the name"
    )]
    Undeclared(String),
}

/// Application variables after every provider has been applied.
#[derive(Debug, Default)]
pub struct AppVariables {
    values: BTreeMap<String, Value>,
    /// Secret variables left on their manifest default (fine locally, not
    /// in production).
    secrets_on_default: Vec<String>,
}

impl AppVariables {
    /// Resolves every declared variable; a required one without a value is an error.
    pub fn resolve(
        manifest: &Manifest,
        flags: &[String],
        runtime_values: &BTreeMap<String, String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, VariableError> {
        let mut from_flags = HashMap::new();
        for flag in flags {
            let (k, v) = flag
                .split_once('=')
                .ok_or_else(|| VariableError::BadFlag(flag.clone()))?;
            if !manifest.variables.contains_key(k) {
                return Err(VariableError::Undeclared(k.to_string()));
            }
            from_flags.insert(k.to_string(), v.to_string());
        }
        let mut values = BTreeMap::new();
        let mut secrets_on_default = Vec::new();
        for (name, decl) in &manifest.variables {
            let provided = from_flags
                .get(name)
                .cloned()
                .or_else(|| env(&format!("SPIN_VARIABLE_{}", name.to_uppercase())))
                .or_else(|| runtime_values.get(name).cloned());
            if provided.is_none() && decl.secret && decl.default.is_some() {
                secrets_on_default.push(name.clone());
            }
            let value = provided.or_else(|| decl.default.clone());
            match value {
                Some(value) => {
                    values.insert(
                        name.clone(),
                        Value {
                            value,
                            secret: decl.secret,
                        },
                    );
                }
                None if decl.required => return Err(VariableError::Missing(name.clone())),
                None => {}
            }
        }
        Ok(AppVariables {
            values,
            secrets_on_default,
        })
    }

    pub fn secrets_on_default(&self) -> &[String] {
        &self.secrets_on_default
    }

    /// The value of application variable `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|v| v.value.as_str())
    }

    /// Renders a component's variable templates. Templates were checked when
    /// the manifest loaded; a reference to a variable with no value leaves
    /// that component variable undefined.
    pub fn for_component(&self, templates: &BTreeMap<String, String>) -> ComponentVariables {
        let mut values = HashMap::new();
        'vars: for (name, template) in templates {
            let Ok(parts) = parse_template(template) else {
                continue;
            };
            let mut out = String::new();
            for part in parts {
                match part {
                    TemplatePart::Literal(l) => out.push_str(&l),
                    TemplatePart::Variable(v) => match self.values.get(&v) {
                        Some(value) => out.push_str(&value.value),
                        None => continue 'vars,
                    },
                }
            }
            values.insert(name.clone(), out);
        }
        ComponentVariables {
            values: Arc::new(values),
        }
    }
}

/// What one component may read: its own variables, rendered.
#[derive(Clone, Default)]
pub struct ComponentVariables {
    values: Arc<HashMap<String, String>>,
}

impl ComponentVariables {
    /// Every variable, for `wasi:config/store.get-all`.
    fn all(&self) -> Vec<(String, String)> {
        let mut all: Vec<_> = self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort();
        all
    }

    fn get(&self, name: &str) -> Result<String, Error> {
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(Error::InvalidName(format!(
                "`{name}` is not a valid variable name"
            )));
        }
        self.values.get(name).cloned().ok_or_else(|| {
            Error::Undefined(format!(
                "variable `{name}` is not defined for this component; add it to the component's [component.NAME.variables]"
            ))
        })
    }
}

/// The `HasData` marker tying `spin:variables` to the store's variables.
pub struct Variables;

impl HasData for Variables {
    type Data<'a> = &'a ComponentVariables;
}

impl wit::Host for &ComponentVariables {}

impl wit2::Host for &ComponentVariables {
    fn get(&mut self, name: String) -> wasmtime::Result<Result<String, wit2::Error>> {
        Ok(ComponentVariables::get(self, &name).map_err(|e| match e {
            Error::InvalidName(m) => wit2::Error::InvalidName(m),
            Error::Undefined(m) => wit2::Error::Undefined(m),
            Error::Provider(m) => wit2::Error::Provider(m),
            Error::Other(m) => wit2::Error::Other(m),
        }))
    }
}

/// As Spin does: a name that is not a variable (undefined or not even a
/// valid name) is `none`, not an error.
impl wasi_config::Host for &ComponentVariables {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, wasi_config::Error>> {
        Ok(Ok(ComponentVariables::get(self, &key).ok()))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, wasi_config::Error>> {
        Ok(Ok(self.all()))
    }
}

impl<T> wit::HostWithStore<T> for Variables {
    async fn get(
        store: &Accessor<T, Self>,
        name: String,
    ) -> wasmtime::Result<Result<String, Error>> {
        Ok(store.with(|mut view| view.get().get(&name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(vars: &str, component_vars: &str) -> Manifest {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
        let path = dir.path().join("spin.toml");
        std::fs::write(
            &path,
            format!(
                "spin_manifest_version = 2\n[application]\nname = \"t\"\n[variables]\n{vars}\n[component.a]\nsource = \"a.wasm\"\n[component.a.variables]\n{component_vars}\n"
            ),
        )
        .unwrap();
        Manifest::load(&path).unwrap()
    }

    #[test]
    fn precedence_is_flag_env_runtime_default() {
        let m = manifest(
            "a = { default = \"d\" }\nb = { default = \"d\" }\nc = { default = \"d\" }\nd = { default = \"d\" }",
            "a = \"{{ a }}\"\nb = \"{{ b }}\"\nc = \"{{ c }}\"\nd = \"x-{{ d }}\"",
        );
        let runtime = BTreeMap::from([
            ("a".to_string(), "rt".to_string()),
            ("b".to_string(), "rt".to_string()),
            ("c".to_string(), "rt".to_string()),
        ]);
        let env =
            |k: &str| matches!(k, "SPIN_VARIABLE_A" | "SPIN_VARIABLE_B").then(|| "env".to_string());
        let vars = AppVariables::resolve(&m, &["a=flag".into()], &runtime, env).unwrap();
        let templates = m.components["a"].grants["variables"]
            .clone()
            .try_into()
            .unwrap();
        let c = vars.for_component(&templates);
        assert_eq!(c.get("a").unwrap(), "flag");
        assert_eq!(c.get("b").unwrap(), "env");
        assert_eq!(c.get("c").unwrap(), "rt");
        assert_eq!(c.get("d").unwrap(), "x-d");
        assert!(matches!(c.get("zz"), Err(Error::Undefined(_))));
        assert!(matches!(c.get("Bad-Name"), Err(Error::InvalidName(_))));
    }

    #[test]
    fn missing_required_names_the_fix() {
        let m = manifest("s = { required = true, secret = true }", "");
        let e = AppVariables::resolve(&m, &[], &BTreeMap::new(), |_| None).unwrap_err();
        assert!(e.to_string().contains("SPIN_VARIABLE_S"), "{e}");
    }

    #[test]
    fn secrets_are_masked_in_debug_output() {
        let m = manifest("s = { required = true, secret = true }", "");
        let vars =
            AppVariables::resolve(&m, &["s=hunter22".into()], &BTreeMap::new(), |_| None).unwrap();
        let shown = format!("{vars:?}");
        assert!(!shown.contains("hunter22"), "{shown}");
        assert!(shown.contains("<secret>"), "{shown}");
    }
}
