//! The application manifest: `spin.toml` in Spin's manifest v2 format, plus
//! Spindle's `[[trigger.amqp]]` trigger type.
//!
//! Loading parses and then validates the application's shape (components,
//! routes, triggers, variables), so a bad manifest stops start-up with one
//! message that names the file, the key and the fix, instead of failing on
//! the first request. A component's grant keys (`blob_buckets`,
//! `allowed_outbound_hosts`, ...) belong to the capabilities, which
//! validate them ([`crate::capabilities::registry::grants`]).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// `[application.trigger.http] base`: every route is relative to it
    /// (`/` when absent).
    pub http_base: String,
    pub http_routes: Vec<HttpRoute>,
    pub amqp_triggers: Vec<AmqpTrigger>,
    /// Components by id, in id order (inline trigger components included,
    /// under the ids Spin gives them).
    pub components: BTreeMap<String, Component>,
    /// Keys accepted but not acted on, each naming the key and why; the
    /// caller logs them once.
    pub warnings: Vec<String>,
}

/// `[application]`. `description`, `authors` and `tool` are accepted as in
/// Spin and not used; `targets` (Spin's deploy-time compatibility check)
/// is accepted with a warning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub authors: Vec<String>,
    #[serde(default)]
    targets: Option<toml::Value>,
    /// `[application.trigger.TYPE]`: settings for a trigger type.
    #[serde(default)]
    trigger: BTreeMap<String, toml::Table>,
    /// Settings for other tools; Spin ignores it too.
    #[serde(default, rename = "tool")]
    _tool: Option<toml::Table>,
}

/// `[variables] NAME = { default = "...", required = bool, secret = bool,
/// description = "..." }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub description: Option<String>,
}

/// One `[[trigger.http]]` entry after validation.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    /// The trigger's `id`, or the one Spin would give it
    /// (`COMPONENT-http-trigger`, `http-triggerN`).
    pub trigger_id: String,
    pub target: RouteTarget,
    pub route: RoutePattern,
}

impl HttpRoute {
    /// The component this route invokes (none for a static response).
    pub fn component(&self) -> Option<&str> {
        match &self.target {
            RouteTarget::Component(id) => Some(id),
            RouteTarget::Static(_) => None,
        }
    }
}

/// What a route answers with.
#[derive(Debug, Clone)]
pub enum RouteTarget {
    Component(String),
    /// `static_response`: answered by the host without any component.
    Static(Arc<StaticResponse>),
}

/// A `[[trigger.http]] static_response`: status (default 200), headers and
/// body, as in Spin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticResponse {
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
}

impl StaticResponse {
    pub fn status(&self) -> u16 {
        self.status_code.unwrap_or(200)
    }

    pub fn headers(&self) -> impl Iterator<Item = (&String, &String)> {
        self.headers.iter()
    }

    pub fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }

    fn check(&self) -> Result<(), String> {
        http::StatusCode::from_u16(self.status())
            .map_err(|_| format!("status_code {} is not an HTTP status", self.status()))?;
        for (name, value) in &self.headers {
            http::HeaderName::try_from(name.as_str())
                .map_err(|_| format!("`{name}` is not a valid header name"))?;
            http::HeaderValue::try_from(value.as_str())
                .map_err(|_| format!("the value of header `{name}` is not valid"))?;
        }
        Ok(())
    }
}

/// A route of `[[trigger.http]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePattern {
    /// A path pattern as Spin's router takes it: exact segments, `:name`
    /// segments (captured into `spin-path-match-NAME`), and a trailing
    /// `/...` (or `/*`) wildcard.
    Path {
        /// The route as written in the manifest.
        raw: String,
        /// The route below `[application.trigger.http] base`, as matched.
        based: String,
        /// Whether it ends in a wildcard.
        wildcard: bool,
    },
    /// Reachable only through `http://NAME.spin.internal`.
    Private,
}

impl RoutePattern {
    /// The route as written, e.g. `/api/...`.
    pub fn raw(&self) -> &str {
        match self {
            RoutePattern::Path { raw, .. } => raw,
            RoutePattern::Private => "(private)",
        }
    }

    /// The matched prefix, e.g. `/api` for `/api/...` (Spin's
    /// `spin-component-route`).
    pub fn raw_prefix(&self) -> &str {
        let raw = self.raw();
        raw.strip_suffix("/...")
            .or_else(|| raw.strip_suffix("/*"))
            .unwrap_or(raw)
    }
}

impl std::fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoutePattern::Path { based, .. } if based.is_empty() => f.write_str("/"),
            RoutePattern::Path { based, .. } => f.write_str(based),
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

/// A `[component.NAME]` entry after validation.
#[derive(Debug, Clone)]
pub struct Component {
    /// The component's file, relative to the manifest's folder.
    pub source: PathBuf,
    /// Shown under the component's routes at start-up, as `spin up` does.
    pub description: Option<String>,
    pub build: Option<BuildConfig>,
    /// Every other key: what the capabilities grant the component, parsed
    /// and validated by them.
    pub grants: toml::Table,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    /// One shell command; a list in the manifest (Spin's `command = ["a",
    /// "b"]`) runs its commands in order, stopping at the first failure,
    /// each in its own shell: `(a) && (b)`.
    #[serde(deserialize_with = "one_or_many_commands")]
    pub command: String,
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Globs of the files `spindle up --watch` rebuilds this component on,
    /// relative to `workdir` (the manifest's folder when there is none), as
    /// in Spin; a leading `!` excludes. Empty: the component is not watched.
    #[serde(default)]
    pub watch: Vec<String>,
}

fn one_or_many_commands<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Commands {
        One(String),
        Many(Vec<String>),
    }
    match Commands::deserialize(d)? {
        Commands::One(c) => Ok(c),
        Commands::Many(list) if list.len() == 1 => Ok(list.into_iter().collect()),
        Commands::Many(list) => Ok(list
            .iter()
            .map(|c| format!("({c})"))
            .collect::<Vec<_>>()
            .join(" && ")),
    }
}

/// The raw TOML shape, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: toml::Value,
    application: Application,
    #[serde(default)]
    variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    trigger: RawTriggers,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Default, Deserialize)]
struct RawTriggers {
    #[serde(default)]
    http: Vec<RawHttpTrigger>,
    #[serde(default)]
    amqp: Vec<AmqpTrigger>,
    /// Trigger types Spindle does not run (redis, cron, ...).
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpTrigger {
    #[serde(default)]
    id: Option<String>,
    /// A component id, or an inline component table.
    #[serde(default)]
    component: Option<toml::Value>,
    #[serde(default)]
    static_response: Option<StaticResponse>,
    route: RawRoute,
    /// `{ type = "http" }` (or `"spin"`); Spin's Wagi executor is refused.
    #[serde(default)]
    executor: Option<toml::Table>,
    /// Spin's per-trigger extra components (not used by the HTTP trigger)
    /// and middleware dependencies: refused, they would change what runs.
    #[serde(default)]
    components: Option<toml::Value>,
    #[serde(default)]
    dependencies: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRoute {
    Path(String),
    Private { private: bool },
}

/// `[component.NAME]` as written. Keys Spin defines whose feature Spindle
/// does not have are named here so each can be judged: ignored with a
/// warning when that changes nothing a request sees, refused otherwise.
#[derive(Deserialize)]
struct RawComponent {
    source: toml::Value,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    build: Option<BuildConfig>,
    /// Settings for other tools; Spin ignores it too.
    #[serde(default, rename = "tool")]
    _tool: Option<toml::Table>,
    #[serde(default)]
    targets: Option<toml::Value>,
    #[serde(default)]
    profile: Option<toml::Table>,
    #[serde(default)]
    dependencies: Option<toml::Table>,
    #[serde(default)]
    dependencies_inherit_configuration: Option<bool>,
    #[serde(default)]
    ai_models: Vec<String>,
    #[serde(flatten)]
    grants: toml::Table,
}

/// Where a manifest is: `from` itself, or `spin.toml` inside it when it
/// is a folder (`spindle up -f APP_DIR`, as `spin up -f`).
pub fn manifest_path(from: &Path) -> PathBuf {
    if from.is_dir() {
        from.join("spin.toml")
    } else {
        from.to_path_buf()
    }
}

impl Manifest {
    /// Reads, parses and validates the manifest at `path` (a `spin.toml`,
    /// or a folder holding one).
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let path = &manifest_path(path);
        let err = |key: &str, problem: String, fix: String| ManifestError {
            file: path.to_path_buf(),
            key: key.to_string(),
            problem,
            fix,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(
                "(file)",
                format!("cannot read the manifest: {e}"),
                "pass a spin.toml, or the folder holding it, with -f/--from".into(),
            )
        })?;
        let raw: RawManifest = toml::from_str(&text).map_err(|e| {
            let key = e
                .span()
                .map(|s| {
                    let before = text.get(..s.start).unwrap_or_default();
                    format!("line {}", before.lines().count().max(1))
                })
                .unwrap_or_else(|| "(toml)".into());
            let message = e.message().to_string();
            let fix = match unknown_field_suggestion(&message) {
                Some(suggestion) => suggestion,
                None => "fix the TOML so it follows Spin's manifest v2 format".into(),
            };
            err(&key, message, fix)
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
        if raw.spin_manifest_version != toml::Value::Integer(2) {
            return Err(err(
                "spin_manifest_version".into(),
                format!("version {} is not supported", raw.spin_manifest_version),
                "set spin_manifest_version = 2 (`spin doctor` converts a version 1 manifest)"
                    .into(),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut warnings = Vec::new();
        let reserved = |key: String, name: &str| {
            err(
                key,
                format!(
                    "`{name}` starts with `{RESERVED_PREFIX}`, which is reserved for the platform's own buckets, queues and exchanges (deploy records among them)"
                ),
                "choose a name that does not start with `spindle`".into(),
            )
        };

        if raw.application.targets.is_some() {
            warnings.push("application.targets: ignored; it is Spin's deploy-time compatibility check, which Spindle does not make".into());
        }
        let http_base = application_trigger_settings(&raw.application, &raw.trigger, &mut warnings)
            .map_err(|(key, problem, fix)| err(key, problem, fix))?;

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

        if let Some(kind) = raw.trigger.other.keys().next() {
            return Err(err(
                format!("trigger.{kind}"),
                format!(
                    "Spindle does not run `{kind}` triggers (it runs `http` and `amqp`); the components it triggers would never run"
                ),
                "remove the trigger or run the application with Spin and its trigger plugin".into(),
            ));
        }

        let mut raw_components = raw.component;
        // Spin names triggers without an `id` and moves inline components
        // into the component table; ids follow its rules.
        let mut taken_ids: Vec<String> = raw
            .trigger
            .http
            .iter()
            .filter_map(|t| t.id.clone())
            .collect();
        let mut trigger_counter = 1;
        let mut inline_counter = 1;
        let mut http_routes: Vec<HttpRoute> = Vec::new();
        for (i, t) in raw.trigger.http.into_iter().enumerate() {
            let key = |field: &str| format!("trigger.http[{i}].{field}");
            if t.components.is_some() {
                return Err(err(
                    key("components"),
                    "the HTTP trigger takes one `component`; Spin refuses `components` here too"
                        .into(),
                    "name one component with `component = \"ID\"`".into(),
                ));
            }
            if t.dependencies.is_some() {
                return Err(err(
                    key("dependencies"),
                    "trigger middleware dependencies are not supported by Spindle; running the component without them would change what each request sees".into(),
                    "compose the middleware into the component (e.g. with `wac`) and drop `dependencies`".into(),
                ));
            }
            if let Some(executor) = &t.executor {
                match executor.get("type").and_then(toml::Value::as_str) {
                    Some("http" | "spin") if executor.len() == 1 => {}
                    Some("wagi") => {
                        return Err(err(
                            key("executor"),
                            "the Wagi executor is not supported by Spindle".into(),
                            "build the component as a wasi:http component and remove `executor`"
                                .into(),
                        ));
                    }
                    _ => {
                        return Err(err(
                            key("executor"),
                            format!("`{executor}` is not an executor Spindle knows"),
                            "use executor = { type = \"http\" } or leave it out".into(),
                        ));
                    }
                }
            }
            let trigger_id = match &t.id {
                Some(id) => id.clone(),
                None => {
                    let natural = match &t.component {
                        Some(toml::Value::String(c)) => Some(format!("{c}-http-trigger")),
                        _ => None,
                    };
                    match natural.filter(|n| !taken_ids.contains(n)) {
                        Some(id) => id,
                        None => loop {
                            let id = format!("http-trigger{trigger_counter}");
                            if !taken_ids.contains(&id) {
                                break id;
                            }
                            trigger_counter += 1;
                        },
                    }
                }
            };
            taken_ids.push(trigger_id.clone());
            let target = match (t.component, t.static_response) {
                (Some(toml::Value::String(id)), None) => {
                    if !raw_components.contains_key(&id) {
                        return Err(err(
                            key("component"),
                            format!("unknown component `{id}`"),
                            format!(
                                "define [component.{id}] or use one of: {}",
                                known(raw_components.keys())
                            ),
                        ));
                    }
                    RouteTarget::Component(id)
                }
                (Some(inline @ toml::Value::Table(_)), None) => {
                    let component: RawComponent = inline.try_into().map_err(|e: toml::de::Error| {
                        err(key("component"), e.message().to_string(), "fix the inline component, or define it as [component.ID] and name it here".into())
                    })?;
                    let natural = format!("{trigger_id}-component");
                    let id = if check_component_id(&natural).is_ok()
                        && !raw_components.contains_key(&natural)
                    {
                        natural
                    } else {
                        loop {
                            let id = format!("inline-component{inline_counter}");
                            if !raw_components.contains_key(&id) {
                                break id;
                            }
                            inline_counter += 1;
                        }
                    };
                    raw_components.insert(id.clone(), component);
                    RouteTarget::Component(id)
                }
                (Some(other), None) => {
                    return Err(err(
                        key("component"),
                        format!("`{other}` is neither a component id nor an inline component"),
                        "write component = \"ID\"".into(),
                    ));
                }
                (None, Some(response)) => {
                    response.check().map_err(|p| {
                        err(
                            key("static_response"),
                            p,
                            "fix the status code or header".into(),
                        )
                    })?;
                    RouteTarget::Static(Arc::new(response))
                }
                (None, None) | (Some(_), Some(_)) => {
                    return Err(err(
                        format!("trigger.http[{i}]"),
                        "a trigger needs exactly one of `component` and `static_response`".into(),
                        "set `component = \"ID\"` or a `static_response` table".into(),
                    ));
                }
            };
            let route = match t.route {
                RawRoute::Private { private: true } => RoutePattern::Private,
                RawRoute::Private { private: false } => {
                    return Err(err(
                        key("route"),
                        "`private = false` is not a route".into(),
                        "give a path such as \"/login\" or use { private = true }".into(),
                    ));
                }
                RawRoute::Path(p) => parse_route(&http_base, &p).map_err(|problem| {
                    err(
                        key("route"),
                        problem,
                        "write an exact path like \"/login\", with `:name` segments like \"/users/:id\" or a trailing wildcard like \"/api/...\"".into(),
                    )
                })?,
            };
            if let RoutePattern::Path { raw: r, based, .. } = &route {
                if based.starts_with(WELL_KNOWN_PREFIX) {
                    warnings.push(format!(
                        "{}: `{r}` is under {WELL_KNOWN_PREFIX}, which the host answers itself; the route is never reached",
                        key("route")
                    ));
                }
                // As in Spin, the later of two identical routes serves it.
                if let Some(dup) = http_routes
                    .iter()
                    .position(|h| matches!(&h.route, RoutePattern::Path { raw, .. } if raw == r))
                {
                    let replaced = http_routes.remove(dup);
                    warnings.push(format!(
                        "{}: route `{r}` is also given to `{}` (trigger {}); as in Spin the later entry serves it and the earlier one is never used",
                        key("route"),
                        replaced.component().unwrap_or("a static response"),
                        replaced.trigger_id
                    ));
                }
            }
            http_routes.push(HttpRoute {
                trigger_id,
                target,
                route,
            });
        }

        let mut components = BTreeMap::new();
        for (id, component) in raw_components {
            check_component_id(&id).map_err(|p| {
                err(
                    format!("component.{id}"),
                    p,
                    "use lowercase letters, digits and dashes, starting with a letter".into(),
                )
            })?;
            let key = |field: &str| format!("component.{id}.{field}");
            let source = match &component.source {
                toml::Value::String(s) => PathBuf::from(s),
                toml::Value::Table(t) if t.contains_key("url") => {
                    return Err(err(
                        key("source"),
                        "a component downloaded from a URL: Spindle runs local files only".into(),
                        "download it, check its digest, and point `source` at the file".into(),
                    ));
                }
                toml::Value::Table(t) if t.contains_key("package") => {
                    return Err(err(
                        key("source"),
                        "a component from a registry: Spindle runs local files only".into(),
                        "fetch the package (e.g. `wkg get`) and point `source` at the file".into(),
                    ));
                }
                other => {
                    return Err(err(
                        key("source"),
                        format!("`{other}` is not a component source"),
                        "write source = \"path/to/component.wasm\"".into(),
                    ));
                }
            };
            // A component with a build command may not be built yet; `up --build`
            // and `build` create its source, so only check sources without one.
            let file = base.join(&source);
            if component.build.is_none() && !file.is_file() {
                return Err(err(
                    key("source"),
                    format!("file {} does not exist", file.display()),
                    "point `source` at a built .wasm component".into(),
                ));
            }
            if component
                .dependencies
                .as_ref()
                .is_some_and(|d| !d.is_empty())
            {
                return Err(err(
                    key("dependencies"),
                    "component dependencies are not composed by Spindle; the component's imports they satisfy would be missing".into(),
                    "compose them ahead of time (e.g. `wac plug`), point `source` at the result and drop `dependencies`".into(),
                ));
            }
            if component.dependencies_inherit_configuration.is_some() {
                warnings.push(format!(
                    "{}: ignored; the component has no dependencies for it to apply to",
                    key("dependencies_inherit_configuration")
                ));
            }
            if !component.ai_models.is_empty() {
                warnings.push(format!(
                    "{}: ignored; Spindle has no AI inferencing, so a component that imports Spin's LLM interface will not link",
                    key("ai_models")
                ));
            }
            if component.grants.contains_key("allowed_http_hosts") {
                warnings.push(format!(
                    "{}: deprecated in Spin; each host is allowed as http:// and https:// (`self` as http://self); write allowed_outbound_hosts instead",
                    key("allowed_http_hosts")
                ));
            }
            if component.targets.is_some() {
                warnings.push(format!(
                    "{}: ignored; it is Spin's deploy-time compatibility check",
                    key("targets")
                ));
            }
            if component.profile.is_some() {
                warnings.push(format!(
                    "{}: ignored; Spindle runs the default profile (Spin applies these only with `spin up --profile`)",
                    key("profile")
                ));
            }
            components.insert(
                id,
                Component {
                    source,
                    description: component.description,
                    build: component.build,
                    grants: component.grants,
                },
            );
        }

        for (i, t) in raw.trigger.amqp.iter().enumerate() {
            match (&t.component, &t.worker) {
                (Some(c), None) if !components.contains_key(c) => {
                    return Err(err(
                        format!("trigger.amqp[{i}].component"),
                        format!("unknown component `{c}`"),
                        format!(
                            "define [component.{c}] or use one of: {}",
                            known(components.keys())
                        ),
                    ));
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
            http_base,
            http_routes,
            amqp_triggers: raw.trigger.amqp,
            components,
            warnings,
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

    /// Adds `KEY=VALUE` pairs to every component's `environment`, over the
    /// manifest's own values (`spindle up -e`, as `spin up -e`).
    pub fn add_environment(&mut self, pairs: &[(String, String)]) {
        if pairs.is_empty() {
            return;
        }
        for component in self.components.values_mut() {
            let env = component
                .grants
                .entry("environment")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            // A malformed `environment` is reported when grants are read.
            if let toml::Value::Table(env) = env {
                for (k, v) in pairs {
                    env.insert(k.clone(), toml::Value::String(v.clone()));
                }
            }
        }
    }
}

/// Paths under this prefix are answered by the host (`health`, `info`).
pub const WELL_KNOWN_PREFIX: &str = "/.well-known/spin/";

/// `[application.trigger.TYPE]`: the HTTP trigger's `base` (Spin 2's
/// meaning: every route is relative to it); settings for trigger types
/// Spindle does not run are ignored with a warning when no trigger of that
/// type exists (and refused with the trigger otherwise).
fn application_trigger_settings(
    application: &Application,
    triggers: &RawTriggers,
    warnings: &mut Vec<String>,
) -> Result<String, (String, String, String)> {
    let mut base = String::from("/");
    for (kind, settings) in &application.trigger {
        match kind.as_str() {
            "http" => {
                for (k, v) in settings {
                    match (k.as_str(), v) {
                        ("base", toml::Value::String(b)) => {
                            base = if b.starts_with('/') {
                                b.clone()
                            } else {
                                format!("/{b}")
                            };
                        }
                        ("base", other) => {
                            return Err((
                                "application.trigger.http.base".into(),
                                format!("`{other}` is not a path"),
                                "write base = \"/prefix\"".into(),
                            ));
                        }
                        (other, _) => {
                            let fix = match closest(other, &["base"]) {
                                Some(s) => format!("did you mean `{s}`?"),
                                None => "the HTTP trigger's only setting is `base`".into(),
                            };
                            return Err((
                                format!("application.trigger.http.{other}"),
                                format!("unknown key `{other}`"),
                                fix,
                            ));
                        }
                    }
                }
            }
            other if !triggers.other.contains_key(other) => warnings.push(format!(
                "application.trigger.{other}: ignored; the application has no `{other}` triggers"
            )),
            _ => {}
        }
    }
    Ok(base)
}

/// The candidate closest to `key`, if any is close (clap's measure: Jaro
/// similarity above 0.7).
pub fn closest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro(key, c), *c))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// For serde's "unknown field `x`, expected one of `a`, `b`": the closest
/// valid key and the full list.
fn unknown_field_suggestion(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let valid = expected.join(", ");
    Some(match closest(unknown, &expected) {
        Some(near) => format!("did you mean `{near}`? (valid keys: {valid})"),
        None => format!("valid keys here: {valid}"),
    })
}
/// Buckets, queues and exchanges whose names start with this belong to
/// the platform (e.g. `spindle-deploys`, the deploy records every replica
/// runs): no component may be granted one.
pub const RESERVED_PREFIX: &str = "spindle";

/// Whether `name` is one of the platform's own (see [`RESERVED_PREFIX`]).
pub fn is_reserved(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with(RESERVED_PREFIX)
}

fn known<'a>(ids: impl Iterator<Item = &'a String>) -> String {
    let ids: Vec<&str> = ids.map(String::as_str).collect();
    if ids.is_empty() {
        "(none defined)".into()
    } else {
        ids.join(", ")
    }
}

/// Parses a route as Spin does: made absolute, one trailing slash
/// dropped, joined to `base`; a trailing `/...` or `/*` is a wildcard and
/// `:name` segments capture. Unlike Spin, a `*` anywhere but at the end is
/// refused here (Spin's router would panic on the first request).
fn parse_route(base: &str, route: &str) -> Result<RoutePattern, String> {
    if route.contains(['?', '#', ' ']) {
        return Err(format!("route `{route}` contains `?`, `#` or a space"));
    }
    let absolute = if route.starts_with('/') {
        route.to_string()
    } else {
        format!("/{route}")
    };
    let trim = |s: &str| s.strip_suffix('/').unwrap_or(s).to_string();
    let based = format!("{}{}", trim(base), trim(&absolute));
    let (spec, wildcard) = route_spec(&based)?;
    if let Some(at) = spec
        .segments()
        .iter()
        .position(|s| matches!(s, routefinder::Segment::Wildcard))
        && at + 1 != spec.segments().len()
    {
        return Err(format!(
            "route `{route}` has a wildcard before its end; only a trailing `/...` is allowed"
        ));
    }
    if based.trim_end_matches("/...").contains("...") {
        return Err(format!(
            "route `{route}` uses `...` other than as a trailing `/...` wildcard"
        ));
    }
    Ok(RoutePattern::Path {
        raw: route.to_string(),
        based,
        wildcard,
    })
}

/// The router's form of a based route, and whether it ends in a wildcard.
pub(crate) fn route_spec(based: &str) -> Result<(routefinder::RouteSpec, bool), String> {
    let (text, wildcard) = match based.strip_suffix("/...") {
        Some(prefix) => (format!("{prefix}/*"), true),
        None => (based.to_string(), based.ends_with("/*") || based == "*"),
    };
    let spec = routefinder::RouteSpec::try_from(text.as_str())
        .map_err(|e| format!("route `{based}`: {e}"))?;
    Ok((spec, wildcard))
}

/// Application and component variable names: lowercase letters, digits
/// and underscores, starting with a letter.
pub fn check_variable_name(name: &str) -> Result<(), String> {
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

    fn path(raw: &str, based: &str, wildcard: bool) -> RoutePattern {
        RoutePattern::Path {
            raw: raw.into(),
            based: based.into(),
            wildcard,
        }
    }

    #[test]
    fn routes_parse_as_spin_does() {
        assert_eq!(
            parse_route("/", "/login").unwrap(),
            path("/login", "/login", false)
        );
        assert_eq!(
            parse_route("/", "/login/").unwrap(),
            path("/login/", "/login", false)
        );
        assert_eq!(
            parse_route("/", "login").unwrap(),
            path("login", "/login", false)
        );
        assert_eq!(
            parse_route("/", "/...").unwrap(),
            path("/...", "/...", true)
        );
        assert_eq!(
            parse_route("/", "/api/...").unwrap(),
            path("/api/...", "/api/...", true)
        );
        assert_eq!(
            parse_route("/", "/api/*").unwrap(),
            path("/api/*", "/api/*", true)
        );
        assert_eq!(
            parse_route("/", "/users/:id").unwrap(),
            path("/users/:id", "/users/:id", false)
        );
        assert_eq!(
            parse_route("/base", "/foo/...").unwrap(),
            path("/foo/...", "/base/foo/...", true)
        );
        assert_eq!(
            parse_route("/base/", "/").unwrap(),
            path("/", "/base", false)
        );
        assert!(parse_route("/", "/a/.../b").is_err());
        assert!(parse_route("/", "/a/*/b").is_err());
        assert!(parse_route("/", "/users/:").is_err());
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
            "{HEAD}[[trigger.http]]\nroute = \"/a/*/b\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("trigger.http[0].route"), "{e}");
    }

    /// Every key of Spin's manifest v2 loads; those Spindle does not act
    /// on are named in warnings.
    #[test]
    fn spin_keys_are_accepted() {
        let m = load_str(
            r#"spin_manifest_version = 2
[application]
name = "t"
version = "1.0.0"
description = "an app"
authors = ["me <me@example.com>"]
targets = ["spin-up:3.3"]
[application.trigger.http]
base = "/"
[application.tool.spin-test]
source = "tests"
[variables]
greeting = { default = "hi", description = "what to say" }
[[trigger.http]]
id = "main"
route = "/..."
component = "a"
executor = { type = "http" }
[[trigger.http]]
route = "/inline"
component = { source = "a.wasm", description = "inline" }
[[trigger.http]]
route = "/static"
static_response = { status_code = 201, headers = { x-a = "b" }, body = "made" }
[component.a]
source = "a.wasm"
description = "the main one"
ai_models = ["llama2-chat"]
targets = ["spin-up:3.3"]
dependencies_inherit_configuration = false
[component.a.build]
command = ["cargo build", "cp x y"]
watch = ["src/**/*.rs"]
[component.a.tool.clippy]
lint = true
[component.a.profile.debug]
source = "debug.wasm"
"#,
        )
        .unwrap();
        assert_eq!(m.application.description.as_deref(), Some("an app"));
        assert_eq!(
            m.variables["greeting"].description.as_deref(),
            Some("what to say")
        );
        assert_eq!(
            m.components["a"].description.as_deref(),
            Some("the main one")
        );
        assert_eq!(
            m.components["a"].build.as_ref().unwrap().command,
            "(cargo build) && (cp x y)"
        );
        // Spin's names: the id given, `inline-component`s under their trigger's.
        let ids: Vec<&str> = m
            .http_routes
            .iter()
            .map(|r| r.trigger_id.as_str())
            .collect();
        assert_eq!(ids, ["main", "http-trigger1", "http-trigger2"]);
        assert_eq!(
            m.http_routes[1].component(),
            Some("http-trigger1-component")
        );
        assert!(m.components.contains_key("http-trigger1-component"));
        let RouteTarget::Static(s) = &m.http_routes[2].target else {
            panic!("not static")
        };
        assert_eq!((s.status(), s.body()), (201, Some("made")));
        let warned = m.warnings.join("\n");
        for key in [
            "application.targets",
            "component.a.ai_models",
            "component.a.targets",
            "component.a.profile",
            "component.a.dependencies_inherit_configuration",
        ] {
            assert!(warned.contains(key), "no warning for {key}: {warned}");
        }
    }

    /// Keys whose feature Spindle lacks stop start-up when ignoring them
    /// would change what runs.
    #[test]
    fn unbuilt_features_that_matter_are_refused() {
        let cases = [
            (
                "[component.a]\nsource = \"a.wasm\"\n[component.a.dependencies]\n\"x:y/z\" = \"1.0\"\n",
                "component.a.dependencies",
            ),
            (
                "[component.a]\nsource = { url = \"https://x/a.wasm\", digest = \"sha256:0\" }\n",
                "component.a.source",
            ),
            (
                "[component.a]\nsource = { registry = \"ttl.sh\", package = \"a:b\", version = \"1.0.0\" }\n",
                "component.a.source",
            ),
            (
                "[[trigger.redis]]\nchannel = \"c\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n",
                "trigger.redis",
            ),
            (
                "[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\nexecutor = { type = \"wagi\" }\n[component.a]\nsource = \"a.wasm\"\n",
                "trigger.http[0].executor",
            ),
            (
                "[application.trigger.http]\nbse = \"/x\"\n",
                "application.trigger.http.bse",
            ),
        ];
        for (body, key) in cases {
            let e = load_str(&format!("{HEAD}{body}")).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn typos_name_the_closest_key() {
        let e = load_str(&format!("{HEAD}[variables]\nx = {{ defualt = \"1\" }}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `default`?"), "{e}");
        let e =
            load_str("spin_manifest_version = 2\n[application]\nname = \"t\"\nauthor = [\"x\"]\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("did you mean `authors`?"), "{e}");
    }

    #[test]
    fn base_prefixes_routes_and_duplicates_keep_the_later() {
        let m = load_str(
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[application.trigger.http]\nbase = \"api\"\n\
             [[trigger.http]]\nroute = \"/x\"\ncomponent = \"a\"\n[[trigger.http]]\nroute = \"/x\"\ncomponent = \"b\"\n\
             [component.a]\nsource = \"a.wasm\"\n[component.b]\nsource = \"a.wasm\"\n"
        )
        .unwrap();
        assert_eq!(m.http_base, "/api");
        assert_eq!(m.http_routes.len(), 1);
        assert_eq!(m.http_routes[0].component(), Some("b"));
        assert_eq!(m.http_routes[0].route.to_string(), "/api/x");
        assert!(
            m.warnings
                .iter()
                .any(|w| w.contains("later entry serves it"))
        );
    }

    #[test]
    fn a_folder_means_its_spin_toml() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
        std::fs::write(
            dir.path().join("spin.toml"),
            format!("{HEAD}[component.a]\nsource = \"a.wasm\"\n"),
        )
        .unwrap();
        let m = Manifest::load(dir.path()).unwrap();
        assert_eq!(m.path, dir.path().join("spin.toml"));
    }

    #[test]
    fn env_flags_override_every_component() {
        let mut m = load_str(&format!(
            "{HEAD}[component.a]\nsource = \"a.wasm\"\nenvironment = {{ A = \"1\", B = \"2\" }}\n[component.b]\nsource = \"a.wasm\"\n"
        ))
        .unwrap();
        m.add_environment(&[("B".into(), "flag".into())]);
        assert_eq!(
            m.components["a"].grants["environment"]["A"].as_str(),
            Some("1")
        );
        assert_eq!(
            m.components["a"].grants["environment"]["B"].as_str(),
            Some("flag")
        );
        assert_eq!(
            m.components["b"].grants["environment"]["B"].as_str(),
            Some("flag")
        );
    }
}
