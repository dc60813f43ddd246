//! The deployment files under `deploy/`, checked offline: the Kubernetes
//! manifests against the Kubernetes 1.30 schemas (kubernetes-validate, in
//! strict mode) and against each other (every Secret, ConfigMap, claim,
//! volume and port they name is defined), the systemd units with
//! `systemd-analyze verify`, and every flag and `HUTCH_*` variable that the
//! manifests, units and env files give `hutch` against what `hutch control
//! --help` and `hutch node --help` list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use hutch_test_support::{hutch_bin, python_with, workspace_root};
use serde_json::Value;

/// kubernetes-validate, pinned: its newest release, which carries the
/// schemas of Kubernetes 1.25 to 1.37.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The Kubernetes version the manifests must be valid for.
const KUBERNETES_VERSION: &str = "1.30.0";
/// Every Kubernetes object of Hutch is in this namespace.
const NAMESPACE: &str = "hutch";
/// The image the manifests run (tagged with this crate's version).
const IMAGE: &str = "ghcr.io/hutch-sh/hutch";
/// Where the image and the systemd units have the `hutch` binary.
const HUTCH_PATH: &str = "/usr/local/bin/hutch";
/// The workloads' kinds (objects with a pod template).
const WORKLOADS: [&str; 3] = ["Deployment", "DaemonSet", "StatefulSet"];

fn kubernetes_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

fn systemd_dir() -> PathBuf {
    workspace_root().join("deploy/systemd")
}

/// The files of `dir` whose names end with `suffix`, sorted.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.to_str().unwrap().ends_with(suffix))
        .collect();
    files.sort();
    files
}

/// The Kubernetes manifests: every YAML file of deploy/kubernetes but the
/// kustomization.
fn manifests() -> Vec<PathBuf> {
    let manifests: Vec<PathBuf> = files(&kubernetes_dir(), ".yaml")
        .into_iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    assert!(!manifests.is_empty(), "no manifest in deploy/kubernetes");
    manifests
}

fn file_name(path: &Path) -> &str {
    path.file_name().unwrap().to_str().unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A Python interpreter with kubernetes-validate (and so PyYAML).
fn python() -> PathBuf {
    python_with(
        &KUBERNETES_VALIDATE.replace("==", "-"),
        &[KUBERNETES_VALIDATE],
    )
}

/// The YAML documents of each of `files` (empty ones left out), read with
/// PyYAML.
fn load_yaml(files: &[PathBuf]) -> Vec<(String, Vec<Value>)> {
    const TO_JSON: &str = "import json, sys, yaml\n\
        json.dump([[d for d in yaml.safe_load_all(open(f)) if d is not None] \
        for f in sys.argv[1:]], sys.stdout)";
    let out = Command::new(python())
        .args(["-c", TO_JSON])
        .args(files)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "reading the YAML of {files:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Vec<Value>> = serde_json::from_slice(&out.stdout).unwrap();
    files
        .iter()
        .map(|f| file_name(f).to_owned())
        .zip(docs)
        .collect()
}

/// The flags and the environment variables `hutch SUBCOMMAND --help` lists.
#[derive(Debug)]
struct Help {
    subcommand: String,
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

impl Help {
    fn of(subcommand: &str) -> Help {
        let out = Command::new(hutch_bin())
            .args([subcommand, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "hutch {subcommand} --help");
        let text = String::from_utf8(out.stdout).unwrap();
        // Options are the lines that start with a dash: `-h, --help` or
        // `--listen <LISTEN>  Address... [env: HUTCH_LISTEN=] [default: ...]`.
        let flags = text
            .lines()
            .filter(|l| l.trim_start().starts_with('-'))
            .filter_map(|l| flag_tokens(l).into_iter().next())
            .collect();
        // `[env: NAME=]`, or `[env: NAME]` for a hidden value.
        let env = text
            .split("[env: ")
            .skip(1)
            .map(|s| s[..s.find(['=', ']']).unwrap()].to_owned())
            .collect();
        let help = Help {
            subcommand: subcommand.to_owned(),
            flags,
            env,
        };
        assert!(
            help.flags.contains("--data-dir") && help.env.contains("HUTCH_DATA_DIR"),
            "parsing `hutch {subcommand} --help`: {help:?}"
        );
        help
    }

    fn check_flag(&self, flag: &str, where_: &str) {
        assert!(
            self.flags.contains(flag),
            "{where_}: `hutch {}` has no flag {flag} (it has {:?})",
            self.subcommand,
            self.flags
        );
    }

    fn check_env(&self, var: &str, where_: &str) {
        assert!(
            self.env.contains(var),
            "{where_}: `hutch {}` reads no variable {var} (it reads {:?})",
            self.subcommand,
            self.env
        );
    }
}

/// The `--flag` names in `text`: `--flag=value` gives `--flag`, and so does
/// `VARIABLE=--flag`.
fn flag_tokens(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == '=')
        .map(|t| t.trim_matches(|c| matches!(c, '"' | '\'' | '`' | ',')))
        .filter(|t| {
            t.strip_prefix("--")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_lowercase()))
        })
        .map(|t| {
            t.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect()
        })
        .collect()
}

/// The `HUTCH_*` names in `text` (not the pattern `HUTCH_*` itself).
fn hutch_vars(text: &str) -> Vec<String> {
    text.match_indices("HUTCH_")
        .filter(|(i, _)| !text[..*i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.len() > "HUTCH_".len())
        .collect()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fn array(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// The Kubernetes objects of the manifests, with the file each is in.
struct Objects {
    all: Vec<(String, Value)>,
}

impl Objects {
    fn load() -> Objects {
        let all: Vec<(String, Value)> = load_yaml(&manifests())
            .into_iter()
            .flat_map(|(file, docs)| {
                assert!(!docs.is_empty(), "{file} holds no object");
                docs.into_iter().map(move |d| (file.clone(), d))
            })
            .collect();
        Objects { all }
    }

    fn named(&self, kind: &str, name: &str) -> Option<&Value> {
        self.all
            .iter()
            .map(|(_, o)| o)
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    fn of_kind<'a>(&'a self, kinds: &'a [&str]) -> impl Iterator<Item = (&'a str, &'a Value)> {
        self.all
            .iter()
            .filter(|(_, o)| kinds.iter().any(|k| o["kind"] == *k))
            .map(|(f, o)| (f.as_str(), o))
    }

    /// The keys of the Secret or ConfigMap `name`; `None` if it is not
    /// defined.
    fn keys(&self, kind: &str, name: &str) -> Option<BTreeSet<String>> {
        let object = self.named(kind, name)?;
        Some(
            ["data", "stringData", "binaryData"]
                .iter()
                .filter_map(|field| object[field].as_object())
                .flat_map(|m| m.keys().cloned())
                .collect(),
        )
    }

    /// Panics unless the `kind` (Secret or ConfigMap) `name` is defined
    /// with every key of `keys`; an optional one may be missing.
    fn check_keys(&self, kind: &str, name: &str, keys: &[&str], optional: bool, where_: &str) {
        match self.keys(kind, name) {
            None => assert!(optional, "{where_}: no {kind} {name} in the manifests"),
            Some(defined) => {
                for key in keys {
                    assert!(
                        defined.contains(*key),
                        "{where_}: the {kind} {name} has no key {key} (it has {defined:?})"
                    );
                }
            }
        }
    }
}

#[test]
fn the_manifests_are_valid_kubernetes_1_30_objects() {
    let manifests = manifests();
    let out = Command::new(python())
        .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k"])
        .arg(KUBERNETES_VERSION)
        .args(&manifests)
        .output()
        .expect("running kubernetes-validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A kind or apiVersion it has no schema for is only a WARN line.
    assert!(
        out.status.success() && stdout.trim().is_empty(),
        "kubernetes-validate {KUBERNETES_VERSION} --strict: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Each object is there, in the namespace.
    let objects = Objects::load();
    for (file, object) in &objects.all {
        let name = str_of(&object["metadata"]["name"], "metadata.name");
        if object["kind"] == "Namespace" {
            assert_eq!(name, NAMESPACE, "{file}");
        } else {
            assert_eq!(
                object["metadata"]["namespace"], NAMESPACE,
                "{file}: the namespace of {} {name}",
                object["kind"]
            );
        }
    }
    assert!(objects.named("Namespace", NAMESPACE).is_some());
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let kustomization = kubernetes_dir().join("kustomization.yaml");
    let docs = load_yaml(&[kustomization]);
    let k = &docs[0].1[0];
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    assert_eq!(k["namespace"], NAMESPACE);
    let listed: BTreeSet<&str> = array(&k["resources"])
        .map(|r| str_of(r, "a resource"))
        .collect();
    let manifests = manifests();
    let present: BTreeSet<&str> = manifests.iter().map(|p| file_name(p)).collect();
    assert_eq!(listed, present, "kustomization.yaml's resources");
}

#[test]
fn the_manifests_define_what_they_reference() {
    let objects = Objects::load();
    let version = env!("CARGO_PKG_VERSION");
    let mut pod_labels = Vec::new();
    for (file, workload) in objects.of_kind(&WORKLOADS) {
        let name = str_of(&workload["metadata"]["name"], "metadata.name");
        let here = format!("{file}: {} {name}", workload["kind"]);
        let template = &workload["spec"]["template"];
        let labels = template["metadata"]["labels"].as_object().unwrap();
        for (k, v) in workload["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(labels.get(k), Some(v), "{here}: the selector's {k}");
        }
        let pod = &template["spec"];
        let volumes: BTreeMap<&str, &Value> = array(&pod["volumes"])
            .map(|v| (str_of(&v["name"], "a volume's name"), v))
            .collect();
        for volume in volumes.values() {
            for (kind, field, name_field) in [
                ("Secret", "secret", "secretName"),
                ("ConfigMap", "configMap", "name"),
            ] {
                if let Some(source) = volume.get(field) {
                    let keys: Vec<&str> = array(&source["items"])
                        .map(|i| str_of(&i["key"], "an item's key"))
                        .collect();
                    let name = str_of(&source[name_field], name_field);
                    let optional = source["optional"] == true;
                    objects.check_keys(kind, name, &keys, optional, &here);
                }
            }
            if let Some(claim) = volume.get("persistentVolumeClaim") {
                let claim = str_of(&claim["claimName"], "claimName");
                assert!(
                    objects.named("PersistentVolumeClaim", claim).is_some(),
                    "{here}: no PersistentVolumeClaim {claim}"
                );
            }
        }
        let mut ports = Vec::new();
        for container in array(&pod["containers"]).chain(array(&pod["initContainers"])) {
            let here = format!("{here}, container {}", container["name"]);
            assert_eq!(
                container["image"],
                format!("{IMAGE}:{version}"),
                "{here}: the image, tagged with Hutch's version"
            );
            for mount in array(&container["volumeMounts"]) {
                let volume = str_of(&mount["name"], "a mount's name");
                assert!(volumes.contains_key(volume), "{here}: no volume {volume}");
            }
            let mut env = BTreeSet::new();
            for var in array(&container["env"]) {
                env.insert(str_of(&var["name"], "a variable's name"));
                let from = &var["valueFrom"];
                for (kind, field) in [("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")]
                {
                    if let Some(r) = from.get(field) {
                        objects.check_keys(
                            kind,
                            str_of(&r["name"], "a reference's name"),
                            &[str_of(&r["key"], "a reference's key")],
                            r["optional"] == true,
                            &here,
                        );
                    }
                }
            }
            // $(VAR) in a command or its arguments: Kubernetes leaves an
            // unknown one as it is.
            for arg in array(&container["command"]).chain(array(&container["args"])) {
                let arg = str_of(arg, "an argument");
                for (i, _) in arg.match_indices("$(") {
                    let var = &arg[i + 2..i + arg[i..].find(')').unwrap()];
                    assert!(env.contains(var), "{here}: {arg} names no variable {var}");
                }
            }
            let container_ports: Vec<&Value> = array(&container["ports"]).collect();
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                let probe = &container[probe];
                for handler in ["httpGet", "tcpSocket", "grpc"] {
                    let port = &probe[handler]["port"];
                    if !port.is_null() {
                        assert!(
                            container_ports
                                .iter()
                                .any(|p| p["name"] == *port || p["containerPort"] == *port),
                            "{here}: the {handler} probe's port {port} is not one of its ports"
                        );
                    }
                }
            }
            ports.extend(container_ports);
        }
        pod_labels.push((labels, ports));
    }
    for (file, service) in objects.of_kind(&["Service"]) {
        let here = format!("{file}: Service {}", service["metadata"]["name"]);
        let selector = service["spec"]["selector"].as_object().unwrap();
        let (_, ports) = pod_labels
            .iter()
            .find(|(labels, _)| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{here}: its selector matches no pod"));
        for port in array(&service["spec"]["ports"]) {
            let target = &port["targetPort"];
            assert!(
                ports
                    .iter()
                    .any(|p| p["name"] == *target || p["containerPort"] == *target),
                "{here}: its target port {target} is no port of its pods"
            );
        }
    }
}

/// The `hutch` containers of the manifests, each with its file and the
/// subcommand its arguments start with.
fn hutch_containers(objects: &Objects) -> Vec<(&str, &Value, String)> {
    let mut containers = Vec::new();
    for (file, workload) in objects.of_kind(&WORKLOADS) {
        for container in array(&workload["spec"]["template"]["spec"]["containers"]) {
            if str_of(&container["image"], "image").starts_with(&format!("{IMAGE}:")) {
                assert_eq!(
                    container["command"],
                    serde_json::json!([HUTCH_PATH]),
                    "{file}: {}",
                    container["name"]
                );
                let subcommand = str_of(&container["args"][0], "the subcommand").to_owned();
                containers.push((file, workload, subcommand));
            }
        }
    }
    containers
}

#[test]
fn the_control_plane_runs_alone_and_the_nodes_keep_their_sandboxes() {
    let objects = Objects::load();
    let containers = hutch_containers(&objects);
    let of = |subcommand: &str| {
        let found: Vec<_> = containers
            .iter()
            .filter(|(_, _, s)| s == subcommand)
            .collect();
        assert_eq!(found.len(), 1, "one `hutch {subcommand}` workload");
        found[0].1
    };
    // Control plane replicas share the database: more than one, and an
    // update that never leaves none serving.
    let control = of("control");
    assert_eq!(control["kind"], "Deployment");
    assert!(
        control["spec"]["replicas"].as_u64().is_some_and(|n| n >= 2),
        "the control plane's replicas"
    );
    assert_eq!(control["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        control["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );

    // The nodes' sandboxes outlive the node process: they are on the
    // machine's network, PID namespace and cgroups, and their mounts in a
    // host directory the next node process sees.
    let node = of("node");
    assert_eq!(node["kind"], "DaemonSet");
    let pod = &node["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["privileged"], true);
    let data_dir = array(&container["args"])
        .find_map(|a| a.as_str().unwrap().strip_prefix("--data-dir="))
        .expect("the node's --data-dir");
    let mount = array(&container["volumeMounts"])
        .find(|m| m["mountPath"] == data_dir)
        .expect("the node's data directory is mounted");
    assert_eq!(mount["mountPropagation"], "Bidirectional");
    let volume = array(&pod["volumes"])
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["hostPath"]["path"], data_dir, "a host directory");
    for host in ["/sys/fs/cgroup", "/dev", "/run/hutch"] {
        assert!(
            array(&pod["volumes"]).any(|v| v["hostPath"]["path"] == host),
            "the node mounts the host's {host}"
        );
    }

    // Both read the node secret from the Secret's file.
    for (file, workload, subcommand) in &containers {
        let pod = &workload["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let secret_file = array(&container["args"])
            .find_map(|a| a.as_str().unwrap().strip_prefix("--node-secret-file="))
            .unwrap_or_else(|| panic!("{file}: `hutch {subcommand}` has no --node-secret-file"));
        let (dir, name) = secret_file.rsplit_once('/').unwrap();
        let mount = array(&container["volumeMounts"])
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{file}: nothing is mounted at {dir}"));
        let volume = array(&pod["volumes"])
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert!(
            array(&volume["secret"]["items"]).any(|i| i["path"] == name),
            "{file}: {secret_file} is no file of a Secret volume: {volume}"
        );
    }
}

#[test]
fn the_manifests_give_hutch_only_flags_and_variables_it_has() {
    let objects = Objects::load();
    let mut helps = BTreeMap::new();
    let mut subcommands_of_file: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (file, workload, subcommand) in hutch_containers(&objects) {
        let help = helps
            .entry(subcommand.clone())
            .or_insert_with(|| Help::of(&subcommand));
        let container = &workload["spec"]["template"]["spec"]["containers"][0];
        let here = format!("{file}: {}", workload["metadata"]["name"]);
        for arg in array(&container["args"]).skip(1) {
            let arg = str_of(arg, "an argument");
            assert!(arg.starts_with("--"), "{here}: {arg} is not a flag");
            for flag in flag_tokens(arg) {
                help.check_flag(&flag, &here);
            }
        }
        for var in array(&container["env"]) {
            let name = str_of(&var["name"], "a variable's name");
            if name.starts_with("HUTCH_") {
                help.check_env(name, &here);
            }
        }
        subcommands_of_file
            .entry(file)
            .or_default()
            .insert(subcommand);
    }
    assert_eq!(
        helps.keys().map(String::as_str).collect::<Vec<_>>(),
        ["control", "node"]
    );
    // Flags shown commented out (`# - --flag=...`) for the operator to turn
    // on, and every HUTCH_* name in the file, comments included.
    for (file, subcommands) in subcommands_of_file {
        let text = read(&kubernetes_dir().join(file));
        let commented: Vec<String> = text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix('#'))
            .filter_map(|l| l.trim_start().strip_prefix("- --"))
            .flat_map(|l| flag_tokens(&format!("--{l}")))
            .collect();
        for subcommand in subcommands {
            let help = &helps[&subcommand];
            for flag in &commented {
                help.check_flag(flag, file);
            }
            for var in hutch_vars(&text) {
                help.check_env(&var, file);
            }
        }
    }
}

/// A systemd unit's `KEY=VALUE` settings (continuation lines joined).
fn unit_settings(text: &str) -> Vec<(String, String)> {
    let mut settings = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        if pending.is_empty() && (line.starts_with(['#', ';', '[']) || line.trim().is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                let (key, value) = pending.split_once('=').unwrap();
                settings.push((key.trim().to_owned(), value.trim().to_owned()));
                pending.clear();
            }
        }
    }
    settings
}

/// The systemd units, each with its settings.
fn units() -> Vec<(PathBuf, Vec<(String, String)>)> {
    let units: Vec<_> = files(&systemd_dir(), ".service")
        .into_iter()
        .map(|p| {
            let settings = unit_settings(&read(&p));
            (p, settings)
        })
        .collect();
    assert_eq!(
        units.len(),
        2,
        "hutch-control.service and hutch-node.service"
    );
    units
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn the_systemd_units_give_hutch_only_flags_and_variables_it_has() {
    for (path, settings) in units() {
        let unit = file_name(&path);
        let exec = setting(&settings, "ExecStart").unwrap_or_else(|| panic!("{unit}: ExecStart"));
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(words[0], HUTCH_PATH, "{unit}: the binary");
        let help = Help::of(words[1]);
        assert_eq!(unit, format!("hutch-{}.service", words[1]));
        let text = read(&path);
        for flag in flag_tokens(&text) {
            help.check_flag(&flag, unit);
        }
        for var in hutch_vars(&text) {
            help.check_env(&var, unit);
        }
        // Its env file has an example here, every HUTCH_* variable and flag
        // of which (commented-out ones too) `hutch` knows, and which sets
        // (or shows) every $VARIABLE the command line uses.
        let env_file = setting(&settings, "EnvironmentFile")
            .unwrap_or_else(|| panic!("{unit}: EnvironmentFile"));
        let name = env_file
            .strip_prefix("/etc/hutch/")
            .unwrap_or_else(|| panic!("{unit}: {env_file} is not in /etc/hutch"));
        let example_path = systemd_dir().join(format!("{name}.example"));
        let example = read(&example_path);
        let where_ = file_name(&example_path);
        for flag in flag_tokens(&example) {
            help.check_flag(&flag, where_);
        }
        let vars = hutch_vars(&example);
        assert!(!vars.is_empty(), "{where_} sets no HUTCH_* variable");
        for var in vars {
            help.check_env(&var, where_);
        }
        for line in example.lines() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                assert!(line.contains('='), "{where_}: {line} is no KEY=VALUE line");
            }
        }
        for word in &words[2..] {
            if let Some(var) = word.strip_prefix('$') {
                assert!(
                    example.lines().any(|l| l
                        .trim_start_matches(['#', ' '])
                        .starts_with(&format!("{var}="))),
                    "{unit}: {where_} does not show ${var}"
                );
            }
        }
    }
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let units = units();
    // Sandboxes outlive the node process: stopping the node's unit must
    // stop `hutch node` alone.
    for (path, settings) in &units {
        if file_name(path) == "hutch-node.service" {
            assert_eq!(setting(settings, "KillMode"), Some("process"));
        }
    }
    // `verify` checks that ExecStart's binary exists: the copies run this
    // build's.
    let dir = tempfile::tempdir().unwrap();
    let bin = hutch_bin();
    for (path, _) in &units {
        let unit = file_name(path);
        let copy = dir.path().join(unit);
        let text = read(path).replace(
            &format!("ExecStart={HUTCH_PATH} "),
            &format!("ExecStart={} ", bin.display()),
        );
        std::fs::write(&copy, text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .unwrap_or_else(|e| panic!("running systemd-analyze (Debian's systemd package): {e}"));
        // Unknown or unparsable settings are only warnings, naming the unit.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains(unit),
            "systemd-analyze verify {unit}: {}\n{stderr}",
            out.status
        );
    }
}
