//! The application manifest: `spin.toml` in Spin's manifest v2 format, plus
//! Spindle's grant keys (`mysql_databases`, `blob_buckets`, `publish_queues`,
//! `send_mail`) and its `[[trigger.amqp]]` trigger type.
//!
//! Loading parses and then validates everything a running host relies on, so
//! a bad manifest stops start-up with one message that names the file, the key
//! and the fix, instead of failing on the first request.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A manifest problem, reported as `file: key: problem; fix`.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}; {fix}")]
pub struct ManifestError {
    pub file: PathBuf,
    pub key: String,
    pub problem: String,
    pub fix: String,
}

/// A validated application manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest file; relative paths in it are resolved from its folder.
    pub path: PathBuf,
    pub application: Application,
    /// Application variables by name.
    pub variables: BTreeMap<String, VariableDecl>,
    pub http_routes: Vec<HttpRoute>,
    pub amqp_triggers: Vec<AmqpTrigger>,
    /// Components by id, in id order.
    pub components: BTreeMap<String, Component>,
}

/// `[application]`; keys other than `name` and `version` (description,
/// authors, ...) are accepted as Spin allows them and not used.
#[derive(Debug, Clone, Deserialize)]
pub struct Application {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
}

/// `[variables] NAME = { default = "...", required = bool, secret = bool }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
}

/// One `[[trigger.http]]` entry after validation.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    pub component: String,
    pub route: RoutePattern,
}

/// A route: an exact path, or a prefix followed by the `/...` wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePattern {
    Exact(String),
    /// The prefix without the trailing `/...` (empty for `/...`).
    Wildcard(String),
    /// Reachable only through `http://NAME.spin.internal`.
    Private,
}

impl std::fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoutePattern::Exact(p) => f.write_str(p),
            RoutePattern::Wildcard(p) => write!(f, "{p}/..."),
            RoutePattern::Private => f.write_str("(private)"),
        }
    }
}

/// One `[[trigger.amqp]]` entry: each message on `queue` invokes either a
/// WebAssembly `component` or a native `worker` built into the binary that
/// runs the app (the convert worker: ffmpeg cannot run inside a component).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpTrigger {
    pub queue: String,
    #[serde(default)]
    pub component: Option<String>,
    #[serde(default)]
    pub worker: Option<String>,
    /// Invocations running at once (default 4).
    #[serde(default = "default_concurrency")]
    pub concurrency: u16,
    /// Deliveries before a failing message is dead-lettered (default 5).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry, doubling with each attempt (default 5000).
    #[serde(default = "default_retry_delay_ms")]
    pub retry_delay_ms: u64,
    /// The longest wait between two attempts (default 300000, 5 minutes).
    #[serde(default = "default_retry_delay_max_ms")]
    pub retry_delay_max_ms: u64,
    /// Dead letters kept for the queue (default 10000); the oldest go first.
    #[serde(default = "default_dead_letter_max_count")]
    pub dead_letter_max_count: u64,
    /// Days a dead letter is kept (default 14).
    #[serde(default = "default_dead_letter_max_age_days")]
    pub dead_letter_max_age_days: u64,
}

/// What an `[[trigger.amqp]]` entry invokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmqpTarget<'a> {
    Component(&'a str),
    Worker(&'a str),
}

impl AmqpTrigger {
    /// The validated target (a loaded manifest has exactly one).
    pub fn target(&self) -> AmqpTarget<'_> {
        match (&self.component, &self.worker) {
            (Some(c), _) => AmqpTarget::Component(c),
            (None, Some(w)) => AmqpTarget::Worker(w),
            (None, None) => AmqpTarget::Worker(""),
        }
    }

    /// The component this trigger invokes, if it invokes one.
    pub fn component(&self) -> Option<&str> {
        self.component.as_deref()
    }

    /// How the consumer should take messages (no hook, no metrics).
    pub fn consume_options(&self) -> crate::capabilities::queue::ConsumeOptions {
        use std::time::Duration;
        crate::capabilities::queue::ConsumeOptions {
            prefetch: self.concurrency,
            concurrency: usize::from(self.concurrency),
            max_attempts: self.max_attempts,
            retry_delay: Duration::from_millis(self.retry_delay_ms),
            retry_delay_max: Duration::from_millis(self.retry_delay_max_ms),
            dead_letters: crate::capabilities::queue::DeadLetterLimits {
                max_count: self.dead_letter_max_count,
                max_age: Duration::from_secs(self.dead_letter_max_age_days.saturating_mul(86_400)),
            },
            on_dead_letter: None,
            metrics: None,
        }
    }
}

fn default_concurrency() -> u16 {
    4
}

fn default_max_attempts() -> u32 {
    5
}

fn default_retry_delay_ms() -> u64 {
    5000
}

fn default_retry_delay_max_ms() -> u64 {
    300_000
}

fn default_dead_letter_max_count() -> u64 {
    10_000
}

fn default_dead_letter_max_age_days() -> u64 {
    14
}

/// A `[component.NAME]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub source: PathBuf,
    /// Accepted as in Spin; not used by the host.
    #[serde(default, rename = "description")]
    _description: Option<String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// `spin:mysql` databases this component may open by label.
    #[serde(default)]
    pub mysql_databases: Vec<String>,
    /// `spindle:blobs` buckets this component may use.
    #[serde(default)]
    pub blob_buckets: Vec<String>,
    /// `spindle:queue` queues this component may publish to.
    #[serde(default)]
    pub publish_queues: Vec<String>,
    /// Whether this component may send mail (`spindle:mail`).
    #[serde(default)]
    pub send_mail: bool,
    /// Component variables: values are templates over application variables.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub build: Option<BuildConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    pub command: String,
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Globs of the files `spindle up --watch` rebuilds this component on,
    /// relative to `workdir` (the manifest's folder when there is none), as
    /// in Spin; a leading `!` excludes. Empty: the component is not watched.
    #[serde(default)]
    pub watch: Vec<String>,
}

/// The raw TOML shape, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: u32,
    application: Application,
    #[serde(default)]
    variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    trigger: RawTriggers,
    #[serde(default)]
    component: BTreeMap<String, Component>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTriggers {
    #[serde(default)]
    http: Vec<RawHttpTrigger>,
    #[serde(default)]
    amqp: Vec<AmqpTrigger>,
}

/// Spin's other trigger keys (`id`, `executor`) are accepted and ignored.
#[derive(Deserialize)]
struct RawHttpTrigger {
    route: RawRoute,
    component: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRoute {
    Path(String),
    Private { private: bool },
}

impl Manifest {
    /// Reads, parses and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let err = |key: &str, problem: String, fix: &str| ManifestError {
            file: path.to_path_buf(),
            key: key.to_string(),
            problem,
            fix: fix.to_string(),
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(
                "(file)",
                format!("cannot read the manifest: {e}"),
                "pass the path of a spin.toml with --manifest",
            )
        })?;
        let raw: RawManifest = toml::from_str(&text).map_err(|e| {
            let key = e
                .span()
                .map(|s| format!("line {}", text[..s.start].lines().count().max(1)))
                .unwrap_or_else(|| "(toml)".into());
            err(
                &key,
                e.message().to_string(),
                "fix the TOML so it follows Spin's manifest v2 format",
            )
        })?;
        Self::validate(path, raw)
    }

    fn validate(path: &Path, raw: RawManifest) -> Result<Self, ManifestError> {
        let err = |key: String, problem: String, fix: String| ManifestError {
            file: path.to_path_buf(),
            key,
            problem,
            fix,
        };
        if raw.spin_manifest_version != 2 {
            return Err(err(
                "spin_manifest_version".into(),
                format!("version {} is not supported", raw.spin_manifest_version),
                "set spin_manifest_version = 2".into(),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let reserved = |key: String, name: &str| {
            err(
                key,
                format!(
                    "`{name}` starts with `{RESERVED_PREFIX}`, which is reserved for the platform's own buckets, queues and exchanges (deploy records among them)"
                ),
                "choose a name that does not start with `spindle`".into(),
            )
        };

        for (name, decl) in &raw.variables {
            check_variable_name(name).map_err(|p| {
                err(
                    format!("variables.{name}"),
                    p,
                    "use lowercase letters, digits and underscores, starting with a letter".into(),
                )
            })?;
            if decl.required && decl.default.is_some() {
                return Err(err(
                    format!("variables.{name}"),
                    "a variable cannot be both required and have a default".into(),
                    "remove either `required = true` or `default`".into(),
                ));
            }
        }

        for (id, component) in &raw.component {
            check_component_id(id).map_err(|p| {
                err(
                    format!("component.{id}"),
                    p,
                    "use lowercase letters, digits and dashes, starting with a letter".into(),
                )
            })?;
            // A component with a build command may not be built yet; `up --build`
            // and `build` create its source, so only check sources without one.
            let source = base.join(&component.source);
            if component.build.is_none() && !source.is_file() {
                return Err(err(
                    format!("component.{id}.source"),
                    format!("file {} does not exist", source.display()),
                    "point `source` at a built .wasm component".into(),
                ));
            }
            for (var, template) in &component.variables {
                check_variable_name(var).map_err(|p| {
                    err(
                        format!("component.{id}.variables.{var}"),
                        p,
                        "use lowercase letters, digits and underscores".into(),
                    )
                })?;
                for reference in template_references(template).map_err(|p| {
                    err(
                        format!("component.{id}.variables.{var}"),
                        p,
                        "write references as {{ name }}".into(),
                    )
                })? {
                    if !raw.variables.contains_key(&reference) {
                        return Err(err(
                            format!("component.{id}.variables.{var}"),
                            format!("refers to undefined application variable `{reference}`"),
                            format!("add `{reference}` under [variables]"),
                        ));
                    }
                }
            }
            for (i, bucket) in component.blob_buckets.iter().enumerate() {
                crate::capabilities::blobs::check_bucket(bucket).map_err(|e| {
                    err(
                        format!("component.{id}.blob_buckets[{i}]"),
                        e.to_string(),
                        "name buckets with letters, digits, - and _".into(),
                    )
                })?;
            }
            let granted_names = component
                .blob_buckets
                .iter()
                .map(|b| ("blob_buckets", b))
                .chain(
                    component
                        .publish_queues
                        .iter()
                        .map(|q| ("publish_queues", q)),
                );
            for (key, name) in granted_names {
                if is_reserved(name) {
                    return Err(reserved(format!("component.{id}.{key}"), name));
                }
            }
            for (i, host) in component.allowed_outbound_hosts.iter().enumerate() {
                crate::capabilities::outbound_http::AllowedHost::parse(host).map_err(|p| {
                    err(
                        format!("component.{id}.allowed_outbound_hosts[{i}]"),
                        p,
                        "write it as scheme://host[:port], e.g. \"https://example.com\" or \"http://*.spin.internal\"".into(),
                    )
                })?;
            }
        }

        let unknown_component = |key: String, name: &str| {
            err(
                key,
                format!("unknown component `{name}`"),
                format!(
                    "define [component.{name}] or use one of: {}",
                    known(&raw.component)
                ),
            )
        };
        let mut http_routes = Vec::new();
        for (i, t) in raw.trigger.http.into_iter().enumerate() {
            if !raw.component.contains_key(&t.component) {
                return Err(unknown_component(
                    format!("trigger.http[{i}].component"),
                    &t.component,
                ));
            }
            let route = match t.route {
                RawRoute::Private { private: true } => RoutePattern::Private,
                RawRoute::Private { private: false } => {
                    return Err(err(
                        format!("trigger.http[{i}].route"),
                        "`private = false` is not a route".into(),
                        "give a path such as \"/login\" or use { private = true }".into(),
                    ));
                }
                RawRoute::Path(p) => parse_route(&p).map_err(|problem| {
                    err(
                        format!("trigger.http[{i}].route"),
                        problem,
                        "write an exact path like \"/login\" or a wildcard like \"/api/...\""
                            .into(),
                    )
                })?,
            };
            if route != RoutePattern::Private
                && let Some(dup) = http_routes.iter().find(|r: &&HttpRoute| r.route == route)
            {
                return Err(err(
                    format!("trigger.http[{i}].route"),
                    format!("route {route} is already served by `{}`", dup.component),
                    "give each route to one component".into(),
                ));
            }
            http_routes.push(HttpRoute {
                component: t.component,
                route,
            });
        }

        for (i, t) in raw.trigger.amqp.iter().enumerate() {
            match (&t.component, &t.worker) {
                (Some(c), None) if !raw.component.contains_key(c) => {
                    return Err(unknown_component(format!("trigger.amqp[{i}].component"), c));
                }
                (Some(_), None) => {}
                (None, Some(w)) if w.is_empty() => {
                    return Err(err(
                        format!("trigger.amqp[{i}].worker"),
                        "the worker name is empty".into(),
                        "name a native worker, e.g. \"convert\"".into(),
                    ));
                }
                (None, Some(_)) => {}
                _ => {
                    return Err(err(
                        format!("trigger.amqp[{i}]"),
                        "it needs exactly one of `component` and `worker`".into(),
                        "set `component = \"NAME\"` for a WebAssembly handler or `worker = \"convert\"` for a native worker".into(),
                    ));
                }
            }
            if is_reserved(&t.queue) {
                return Err(reserved(format!("trigger.amqp[{i}].queue"), &t.queue));
            }
            if t.queue.is_empty() {
                return Err(err(
                    format!("trigger.amqp[{i}].queue"),
                    "the queue name is empty".into(),
                    "name the queue to consume, e.g. \"mp3\"".into(),
                ));
            }
            if t.concurrency == 0 || t.max_attempts == 0 {
                return Err(err(
                    format!("trigger.amqp[{i}]"),
                    "concurrency and max_attempts must be at least 1".into(),
                    "raise them or leave them out for the defaults".into(),
                ));
            }
            if t.retry_delay_ms == 0 || t.retry_delay_max_ms < t.retry_delay_ms {
                return Err(err(
                    format!("trigger.amqp[{i}]"),
                    format!(
                        "retry_delay_ms ({}) must be above 0 and at most retry_delay_max_ms ({})",
                        t.retry_delay_ms, t.retry_delay_max_ms
                    ),
                    "raise retry_delay_max_ms or leave both out for the defaults (5000 and 300000)"
                        .into(),
                ));
            }
            if t.dead_letter_max_count == 0 || t.dead_letter_max_age_days == 0 {
                return Err(err(
                    format!("trigger.amqp[{i}]"),
                    "dead_letter_max_count and dead_letter_max_age_days must be at least 1".into(),
                    "dead letters are how failures stay inspectable; leave them out for the defaults (10000 and 14)".into(),
                ));
            }
        }

        Ok(Manifest {
            path: path.to_path_buf(),
            application: raw.application,
            variables: raw.variables,
            http_routes,
            amqp_triggers: raw.trigger.amqp,
            components: raw.component,
        })
    }

    /// The folder relative paths in the manifest are resolved from.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The absolute-or-manifest-relative path of a component's source.
    pub fn source_path(&self, component: &Component) -> PathBuf {
        self.base_dir().join(&component.source)
    }
}

/// Buckets, queues and exchanges whose names start with this belong to
/// the platform (e.g. `spindle-deploys`, the deploy records every replica
/// runs): no component may be granted one.
pub const RESERVED_PREFIX: &str = "spindle";

fn is_reserved(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with(RESERVED_PREFIX)
}

fn known(components: &BTreeMap<String, Component>) -> String {
    if components.is_empty() {
        "(none defined)".into()
    } else {
        components.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn parse_route(route: &str) -> Result<RoutePattern, String> {
    if !route.starts_with('/') {
        return Err(format!("route `{route}` does not start with `/`"));
    }
    if route.contains(['?', '#', ' ']) {
        return Err(format!("route `{route}` contains `?`, `#` or a space"));
    }
    if let Some(prefix) = route.strip_suffix("/...") {
        if prefix.contains("...") {
            return Err(format!("route `{route}` has `...` before its end"));
        }
        return Ok(RoutePattern::Wildcard(
            prefix.trim_end_matches('/').to_string(),
        ));
    }
    if route.contains("...") {
        return Err(format!(
            "route `{route}` uses `...` other than as a trailing `/...` wildcard"
        ));
    }
    let trimmed = route.trim_end_matches('/');
    Ok(RoutePattern::Exact(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }))
}

fn check_variable_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a valid variable name"))
    }
}

fn check_component_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{id}` is not a valid component id"))
    }
}

/// Splits a template such as `"postgres://{{ user }}@host"` into literal and
/// variable parts.
pub fn parse_template(template: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(TemplatePart::Literal(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed `{{{{` in `{template}`"))?;
        let name = after[..end].trim();
        check_variable_name(name)?;
        parts.push(TemplatePart::Variable(name.to_string()));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_string()));
    }
    Ok(parts)
}

fn template_references(template: &str) -> Result<Vec<String>, String> {
    Ok(parse_template(template)?
        .into_iter()
        .filter_map(|p| match p {
            TemplatePart::Variable(v) => Some(v),
            TemplatePart::Literal(_) => None,
        })
        .collect())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Variable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Manifest, ManifestError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
        let path = dir.path().join("spin.toml");
        std::fs::write(&path, text).unwrap();
        Manifest::load(&path)
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
    fn routes_parse_exact_and_wildcard() {
        assert_eq!(
            parse_route("/login").unwrap(),
            RoutePattern::Exact("/login".into())
        );
        assert_eq!(
            parse_route("/login/").unwrap(),
            RoutePattern::Exact("/login".into())
        );
        assert_eq!(
            parse_route("/...").unwrap(),
            RoutePattern::Wildcard(String::new())
        );
        assert_eq!(
            parse_route("/api/...").unwrap(),
            RoutePattern::Wildcard("/api".into())
        );
        assert!(parse_route("login").is_err());
        assert!(parse_route("/a/.../b").is_err());
    }

    #[test]
    fn unknown_component_names_file_key_and_fix() {
        let e = load_str(&format!(
            "{HEAD}[[trigger.http]]\nroute = \"/x\"\ncomponent = \"nope\"\n[component.a]\nsource = \"a.wasm\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("spin.toml"), "{e}");
        assert!(e.contains("trigger.http[0].component"), "{e}");
        assert!(
            e.contains("define [component.nope] or use one of: a"),
            "{e}"
        );
    }

    #[test]
    fn missing_source_is_reported() {
        let e = load_str(&format!("{HEAD}[component.a]\nsource = \"missing.wasm\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("component.a.source"), "{e}");
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn bad_route_is_reported() {
        let e = load_str(&format!(
            "{HEAD}[[trigger.http]]\nroute = \"nolead\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("trigger.http[0].route"), "{e}");
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
    fn templates_split_into_parts() {
        assert_eq!(
            parse_template("a{{ b }}c").unwrap(),
            vec![
                TemplatePart::Literal("a".into()),
                TemplatePart::Variable("b".into()),
                TemplatePart::Literal("c".into())
            ]
        );
        assert!(parse_template("{{ b").is_err());
    }
}
