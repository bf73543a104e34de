//! The shipped deployment files, checked as far as this machine allows (no Docker engine, no
//! cluster): they parse, they agree with the policy they deploy, and the RabbitMQ definitions
//! are exactly what `pipelines broker definitions` generates.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use broker::definitions::{Role, password_hash};
use broker::topology::Topology;
use harness::process;
use harness::sandbox::pipelines_in;
use harness::workspace_root;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

fn file(relative: &str) -> PathBuf {
    workspace_root().join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(file(relative)).unwrap_or_else(|err| panic!("{relative}: {err}"))
}

fn yaml(relative: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(relative)).unwrap_or_else(|err| panic!("{relative}: {err}"))
}

/// The accounts of a policy file, in order, as the binary reads them.
fn accounts(policy: &Path) -> Vec<String> {
    let toml = std::fs::read_to_string(policy).unwrap();
    toml.split("[[accounts]]")
        .skip(1)
        .map(|section| {
            let name = section
                .lines()
                .find_map(|line| line.trim().strip_prefix("name = "))
                .expect("every account has a name");
            name.trim_matches('"').to_owned()
        })
        .collect()
}

/// `pipelines ARGS`, with its scratch files (a terraformrc) in a directory of its own, never
/// in the checkout.
fn pipelines(args: &[&str]) -> (std::process::Command, tempfile::TempDir) {
    let scratch = tempfile::tempdir().unwrap();
    (pipelines_in(scratch.path(), args), scratch)
}

/// `pipelines config check FILE` passes.
fn assert_policy_valid(policy: &Path) {
    let (command, _scratch) = pipelines(&["config", "check", policy.to_str().unwrap()]);
    let checked = process::run(command, Duration::from_secs(30));
    assert_eq!(
        checked.code(),
        Some(0),
        "{}: {}",
        policy.display(),
        checked.transcript()
    );
}

/// `KEY=value` lines of `.env.example`.
fn env_example() -> BTreeMap<String, String> {
    read(".env.example")
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

fn text(yaml: &Yaml) -> String {
    match yaml {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(n) => n.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn words(yaml: &Yaml) -> Vec<String> {
    yaml.as_vec()
        .unwrap_or_else(|| panic!("not a list: {yaml:?}"))
        .iter()
        .map(text)
        .collect()
}

/// `key` of a mapping as Compose reads it: from the mapping itself, else from what it merges
/// (`<<: *anchor`), which yaml-rust2 leaves as a key of its own.
fn merged<'a>(mapping: &'a Yaml, key: &str) -> &'a Yaml {
    let own = &mapping[key];
    match &mapping["<<"] {
        _ if !own.is_badvalue() => own,
        Yaml::Array(sources) => sources
            .iter()
            .map(|source| merged(source, key))
            .find(|value| !value.is_badvalue())
            .unwrap_or(own),
        Yaml::BadValue => own,
        source => merged(source, key),
    }
}

#[test]
fn shipped_definitions_are_the_generators_output_with_the_env_example_passwords() {
    let policy = file("deploy/compose/pipelines.toml");
    let env = env_example();
    let (mut generate, _scratch) = pipelines(&[
        "broker",
        "definitions",
        "--config",
        policy.to_str().unwrap(),
    ]);
    generate.envs(
        env.iter()
            .filter(|(key, _)| key.starts_with("PIPELINES_RABBITMQ_PASSWORD_")),
    );
    let generated = process::run(generate, Duration::from_secs(30));
    assert_eq!(generated.code(), Some(0), "{}", generated.transcript());
    assert!(
        !generated
            .stderr
            .lines()
            .any(|line| line.starts_with("pipelines-")),
        "a password was generated, so .env.example lacks one: {}",
        generated.stderr
    );
    let mut generated: Value = serde_json::from_str(&generated.stdout).unwrap();
    let mut shipped: Value = serde_json::from_str(&read("deploy/rabbitmq/definitions.json"))
        .expect("deploy/rabbitmq/definitions.json is JSON");

    // Hashes are salted, so they differ between runs: check each against its password instead.
    let topology = Topology::new(accounts(&policy));
    for role in Role::all(&topology) {
        let name = role.user("pipelines-");
        let password = env
            .get(&role.password_variable())
            .unwrap_or_else(|| panic!(".env.example has no {}", role.password_variable()));
        let user = shipped["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|user| user["name"] == name.as_str())
            .unwrap_or_else(|| panic!("the shipped definitions have no user {name}"));
        let hash = user["password_hash"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(hash)
            .unwrap();
        let salt: [u8; 4] = bytes[..4].try_into().unwrap();
        assert_eq!(
            password_hash(password, salt),
            hash,
            "{name}'s shipped hash is not of the .env.example password"
        );
    }
    for document in [&mut generated, &mut shipped] {
        for user in document["users"].as_array_mut().unwrap() {
            user["password_hash"] = Value::Null;
        }
    }
    assert_eq!(
        shipped, generated,
        "deploy/rabbitmq/definitions.json is stale: regenerate it (deploy/rabbitmq/README.md)"
    );
}

#[test]
fn compose_runs_each_account_with_its_own_broker_user_and_loads_the_definitions() {
    let compose = yaml("docker-compose.yml");
    let services = &compose[0]["services"];
    let policy = file("deploy/compose/pipelines.toml");
    assert_policy_valid(&policy);
    // Every service mounts the policy, executors too, where a plan's code can read it: it holds
    // no broker URL and no password (it once held the admin's login).
    let policy_text = read("deploy/compose/pipelines.toml");
    for line in policy_text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        assert!(
            !line.starts_with("broker_"),
            "deploy/compose/pipelines.toml sets `{line}`: each service's login belongs in its \
             own environment, the admin's on the command line of the admin command"
        );
        for word in line.split(['"', '\'', ' ', ',', '[', ']', '=']) {
            assert_eq!(
                config::url_password(word),
                None,
                "a password in deploy/compose/pipelines.toml: {line}"
            );
        }
    }
    for (variable, password) in env_example() {
        assert!(
            !variable.contains("PASSWORD") || !policy_text.contains(&password),
            "deploy/compose/pipelines.toml holds {variable}"
        );
    }

    let rabbitmq_volumes = words(&services["rabbitmq"]["volumes"]);
    assert!(
        rabbitmq_volumes
            .iter()
            .any(|v| v.starts_with("./deploy/rabbitmq/definitions.json:")),
        "{rabbitmq_volumes:?}"
    );
    let url = |service: &str| text(&services[service]["environment"]["PIPELINES_BROKER_URL"]);
    assert!(url("dispatcher").starts_with("amqp://pipelines-dispatcher:"));
    // Every service that runs pipelines logs in as its own user, given in its environment.
    let mut runs_pipelines = Vec::new();
    for (name, service) in services.as_hash().unwrap() {
        let name = text(name);
        let command = merged(service, "command");
        if command.is_badvalue() {
            continue;
        }
        let url = text(merged(
            merged(service, "environment"),
            "PIPELINES_BROKER_URL",
        ));
        let user = config::url_user(&url).unwrap_or_else(|| panic!("{name}: {url}"));
        let expected = match words(command)[0].as_str() {
            "dispatch" => "pipelines-dispatcher".to_owned(),
            "execute" => format!("pipelines-{name}"),
            other => panic!("{name} runs `pipelines {other}`"),
        };
        assert_eq!(user, expected, "{name} logs in as {user}");
        // Not PID 1: an init reaps the leftovers a plan's tools were killed for.
        assert_eq!(merged(service, "init").as_bool(), Some(true), "{name}");
        runs_pipelines.push(name);
    }
    assert_eq!(runs_pipelines.len(), 2 + 6, "{runs_pipelines:?}");
    // Two dispatchers share PostgreSQL; its password comes from a secret file, not the URL.
    for dispatcher in ["dispatcher", "dispatcher-standby"] {
        let environment = &services[dispatcher]["environment"];
        let store = text(&environment["PIPELINES_DISPATCHER__STORE"]);
        assert!(
            store.starts_with("postgres://pipelines@postgres:"),
            "{dispatcher}: {store}"
        );
        assert_eq!(config::url_password(&store), None, "{dispatcher}: {store}");
        assert_eq!(
            text(&environment["PIPELINES_DISPATCHER__STORE_PASSWORD_FILE"]),
            "/run/secrets/postgres-password"
        );
        assert_eq!(
            words(&services[dispatcher]["secrets"]),
            ["postgres-password"]
        );
    }
    assert_eq!(
        text(&services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"]),
        "/run/secrets/postgres-password"
    );
    let accounts = accounts(&policy);
    assert_eq!(accounts, ["shared", "dev", "prod"]);
    let mut tool_users = std::collections::BTreeSet::new();
    for account in &accounts {
        for role in ["plan", "apply"] {
            let service = format!("executor-{account}-{role}");
            let command = words(&services[service.as_str()]["command"]);
            let arg =
                |flag: &str| command[command.iter().position(|w| w == flag).unwrap() + 1].clone();
            assert_eq!(arg("--account"), *account, "{service}: {command:?}");
            assert_eq!(arg("--role"), role, "{service}: {command:?}");
            // Its own user, and no password in its environment: that comes from a file.
            assert_eq!(
                url(&service),
                format!("amqp://pipelines-executor-{account}-{role}@rabbitmq:5672/pipelines"),
                "{service}"
            );
            // A plan's code gains nothing from a setuid program, and its memory is bounded.
            let bounds = &services[service.as_str()];
            assert!(
                words(merged(bounds, "security_opt"))
                    .contains(&"no-new-privileges:true".to_owned()),
                "{service}"
            );
            assert!(!merged(bounds, "mem_limit").is_badvalue(), "{service}");
            assert!(!merged(bounds, "pids_limit").is_badvalue(), "{service}");
            let environment = &services[service.as_str()]["environment"];
            assert_eq!(
                text(&environment["PIPELINES_BROKER_PASSWORD_FILE"]),
                "/run/secrets/broker-password",
                "{service}"
            );
            let secret = &services[service.as_str()]["secrets"][0];
            assert_eq!(
                text(&secret["source"]),
                format!("executor-{account}-{role}-password"),
                "{service} reads another role's password"
            );
            // Root's alone: Compose's default mode for a secret from the environment, 0444,
            // would let the worker's tool user read it.
            assert_eq!(
                (
                    secret["uid"].as_str(),
                    secret["gid"].as_str(),
                    secret["mode"].as_i64()
                ),
                (Some("0"), Some("0"), Some(0o400)),
                "{service}: its tool user could read its broker password"
            );
            let variable = format!(
                "PIPELINES_RABBITMQ_PASSWORD_EXECUTOR_{}_{}",
                account.to_ascii_uppercase(),
                role.to_ascii_uppercase()
            );
            assert_eq!(
                text(
                    &compose[0]["secrets"][format!("executor-{account}-{role}-password").as_str()]
                        ["environment"]
                ),
                variable
            );
            assert!(
                tool_users.insert(text(&environment["PIPELINES_EXECUTOR__TOOL_USER"])),
                "{service} shares its tool user"
            );
        }
    }
    assert!(
        services["jaeger"]["image"]
            .as_str()
            .unwrap()
            .starts_with("jaegertracing/")
    );
    // Every variable the compose file reads has a line in .env.example.
    let env = env_example();
    let source = read("docker-compose.yml");
    for reference in source.split("${").skip(1) {
        let name: String = reference
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            name == "PWD" || env.contains_key(&name),
            "docker-compose.yml reads {name}, which .env.example does not document"
        );
    }
}

#[test]
fn kubernetes_manifests_have_a_deployment_per_account_and_a_dispatcher_with_a_volume() {
    // PID 1 of the image is an init that reaps, with the binary as its child.
    let dockerfile = read("deploy/Dockerfile");
    let entrypoint: Vec<String> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("ENTRYPOINT "))
        .map(|json| serde_json::from_str(json).expect("ENTRYPOINT is an exec-form JSON list"))
        .next_back()
        .expect("the Dockerfile has an ENTRYPOINT");
    assert_eq!(
        entrypoint.first().map(String::as_str),
        Some("/usr/bin/tini")
    );
    assert_eq!(entrypoint.last().map(String::as_str), Some("pipelines"));
    assert!(
        dockerfile.contains("--no-install-recommends git ca-certificates curl unzip tini"),
        "the image installs tini"
    );
    let kustomization = yaml("deploy/k8s/kustomization.yaml");
    let resources = words(&kustomization[0]["resources"]);
    let mut documents = Vec::new();
    for resource in &resources {
        for document in yaml(&format!("deploy/k8s/{resource}")) {
            assert!(
                document["apiVersion"].as_str().is_some()
                    && document["kind"].as_str().is_some()
                    && document["metadata"]["name"].as_str().is_some(),
                "{resource}: a document without apiVersion, kind or metadata.name"
            );
            documents.push(document);
        }
    }
    let on_disk = std::fs::read_dir(file("deploy/k8s"))
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().file_name() != "kustomization.yaml")
        .count();
    assert_eq!(
        on_disk,
        resources.len(),
        "every manifest is listed in kustomization.yaml"
    );
    let find = |kind: &str, name: &str| {
        documents
            .iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };

    // The policy in the ConfigMap is valid for the binary.
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("pipelines.toml");
    let config_map = find("ConfigMap", "pipelines-policy");
    std::fs::write(
        &policy,
        config_map["data"]["pipelines.toml"].as_str().unwrap(),
    )
    .unwrap();
    assert_policy_valid(&policy);

    let dispatcher = find("StatefulSet", "pipelines-dispatcher");
    // Two replicas on one PostgreSQL database: one leads, one stands by.
    assert_eq!(dispatcher["spec"]["replicas"].as_i64(), Some(2));
    let claim = &dispatcher["spec"]["volumeClaimTemplates"][0]["metadata"]["name"];
    let container = &dispatcher["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["volumeMounts"]
            .as_vec()
            .unwrap()
            .iter()
            .any(|m| m["name"] == *claim
                && m["mountPath"].as_str() == Some("/var/lib/pipelines/dispatcher")),
        "the dispatcher's state_dir is on its volume"
    );
    let text_of = |yaml: &Yaml| yaml.as_str().unwrap_or_default().to_owned();
    // The run database's URL from a Secret, its password from a file of that Secret, never
    // in the environment.
    let env = container["env"].as_vec().unwrap();
    let var = |name: &str| {
        env.iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("the dispatcher has no {name}"))
    };
    let from = &var("PIPELINES_DISPATCHER__STORE")["valueFrom"]["secretKeyRef"];
    assert_eq!(from["name"].as_str(), Some("pipelines-postgres"));
    let secret = find("Secret", "pipelines-postgres");
    let url = text_of(&secret["stringData"][from["key"].as_str().unwrap()]);
    assert!(url.starts_with("postgres://"), "{url}");
    assert_eq!(
        config::url_password(&url),
        None,
        "a password in the store URL"
    );
    let password_file = text_of(&var("PIPELINES_DISPATCHER__STORE_PASSWORD_FILE")["value"]);
    let mounted = container["volumeMounts"].as_vec().unwrap().iter().any(|m| {
        password_file.starts_with(m["mountPath"].as_str().unwrap_or("-"))
            && dispatcher["spec"]["template"]["spec"]["volumes"]
                .as_vec()
                .unwrap()
                .iter()
                .any(|v| {
                    v["name"] == m["name"]
                        && v["secret"]["secretName"].as_str() == Some("pipelines-postgres")
                })
    });
    assert!(
        mounted,
        "{password_file} is not mounted from pipelines-postgres"
    );
    // No executor reaches the node's cloud identity (instance metadata) or a dispatcher, and
    // no egress rule is open to everything.
    let network = find("NetworkPolicy", "pipelines-executors");
    let selected = &network["spec"]["podSelector"]["matchLabels"];
    let egress = network["spec"]["egress"].as_vec().expect("egress rules");
    // Only the scraper connects to an executor: an ingress rule without `from` would let any
    // pod in, another executor's plan too.
    let ingress = network["spec"]["ingress"].as_vec().expect("ingress rules");
    assert!(
        ingress
            .iter()
            .all(|rule| rule["from"].as_vec().is_some_and(|from| !from.is_empty())),
        "an ingress rule without `from` admits every pod"
    );
    for peer in ingress
        .iter()
        .flat_map(|rule| rule["from"].as_vec().unwrap())
    {
        let selected = &peer["namespaceSelector"]["matchLabels"];
        assert!(
            selected.as_hash().is_some_and(|labels| !labels.is_empty()),
            "an ingress peer that selects every namespace: {peer:?}"
        );
    }
    assert!(words(&network["spec"]["policyTypes"]).contains(&"Egress".to_owned()));
    assert!(
        egress
            .iter()
            .all(|rule| rule["to"].as_vec().is_some_and(|to| !to.is_empty())),
        "an egress rule without `to` allows everything"
    );
    for peer in egress.iter().flat_map(|rule| rule["to"].as_vec().unwrap()) {
        if let Some(cidr) = peer["ipBlock"]["cidr"].as_str() {
            let except = words(&peer["ipBlock"]["except"]);
            let metadata = if cidr.contains(':') {
                "fd00:ec2::254/128"
            } else {
                "169.254.169.254/32"
            };
            assert!(except.contains(&metadata.to_owned()), "{cidr}: {except:?}");
        } else {
            let unless = &peer["podSelector"]["matchExpressions"][0];
            assert_eq!(
                (unless["operator"].as_str(), words(&unless["values"])),
                (Some("NotIn"), vec!["dispatcher".to_owned()]),
                "in-cluster egress must leave the dispatchers out"
            );
        }
    }
    for account in accounts(&policy) {
        let mut tool_users = Vec::new();
        for role in ["plan", "apply"] {
            let name = format!("pipelines-executor-{account}-{role}");
            let deployment = find("Deployment", &name);
            find("ServiceAccount", &name);
            let pod = &deployment["spec"]["template"]["spec"];
            assert_eq!(pod["serviceAccountName"].as_str(), Some(name.as_str()));
            // A user namespace per pod: replicas' tool users are different users on the node,
            // each with its own process limit.
            assert_eq!(
                pod["hostUsers"].as_bool(),
                Some(false),
                "{name}: the node's users"
            );
            let labels = &deployment["spec"]["template"]["metadata"]["labels"];
            for (key, value) in selected.as_hash().unwrap() {
                assert_eq!(
                    &labels[key.as_str().unwrap()],
                    value,
                    "{name}: not under the NetworkPolicy"
                );
            }
            let container = &pod["containers"][0];
            let args = words(&container["args"]);
            let arg = |flag: &str| args[args.iter().position(|w| w == flag).unwrap() + 1].clone();
            assert_eq!(arg("--account"), account);
            assert_eq!(arg("--role"), role);
            // The broker login: the user in the environment, the password only in a file.
            let env: BTreeMap<String, String> = container["env"]
                .as_vec()
                .unwrap()
                .iter()
                .map(|var| (text_of(&var["name"]), text_of(&var["value"])))
                .collect();
            let url = &env["PIPELINES_BROKER_URL"];
            assert_eq!(
                config::url_password(url),
                None,
                "{name}: a password in the environment"
            );
            assert!(url.starts_with(&format!("amqp://{name}@")), "{name}: {url}");
            tool_users.push(env["PIPELINES_EXECUTOR__TOOL_USER"].clone());
            // The init container checks the worker that will start: its policy, account and
            // role, its settings from the environment (a missing tool user or password file
            // would leave their checks out) and its read-only mounts.
            let init = pod["initContainers"]
                .as_vec()
                .and_then(|init| {
                    init.iter()
                        .find(|c| c["name"].as_str() == Some("isolation"))
                })
                .unwrap_or_else(|| panic!("{name}: no isolation init container"));
            assert_eq!(
                words(&init["args"]),
                [
                    "config",
                    "check",
                    arg("--config").as_str(),
                    "--account",
                    account.as_str(),
                    "--role",
                    role
                ],
                "{name}"
            );
            let init_env: BTreeMap<String, String> = init["env"]
                .as_vec()
                .map(|vars| {
                    vars.iter()
                        .map(|var| (text_of(&var["name"]), text_of(&var["value"])))
                        .collect()
                })
                .unwrap_or_default();
            for (variable, value) in env.iter().filter(|(v, _)| v.starts_with("PIPELINES_")) {
                assert_eq!(
                    init_env.get(variable),
                    Some(value),
                    "{name}: the init container's {variable}"
                );
            }
            assert_eq!(
                words(&init["securityContext"]["capabilities"]["drop"]),
                ["ALL"],
                "{name}: the init container's capabilities"
            );
            assert!(
                init["securityContext"]["capabilities"]["add"].is_badvalue(),
                "{name}: the init container adds capabilities"
            );
            let init_mounts = init["volumeMounts"].as_vec().unwrap();
            for mount in container["volumeMounts"].as_vec().unwrap() {
                if mount["readOnly"].as_bool() == Some(true) {
                    assert!(
                        init_mounts.contains(mount),
                        "{name}: the init container lacks {mount:?}"
                    );
                }
            }
            find("Secret", &name);
            let volumes = pod["volumes"].as_vec().unwrap();
            let secret_volumes: Vec<String> = volumes
                .iter()
                .filter_map(|v| v["secret"]["secretName"].as_str().map(str::to_owned))
                .collect();
            assert_eq!(
                secret_volumes,
                std::slice::from_ref(&name),
                "{name} mounts another role's secret"
            );
            // Exactly one projected token, of this role's audience.
            let audiences: Vec<String> = volumes
                .iter()
                .filter_map(|v| v["projected"]["sources"].as_vec())
                .flatten()
                .filter_map(|source| source["serviceAccountToken"]["audience"].as_str())
                .map(str::to_owned)
                .collect();
            assert_eq!(audiences, [format!("pipelines-{role}")], "{name}");
            let mounts = container["volumeMounts"].as_vec().unwrap();
            assert!(
                mounts
                    .iter()
                    .any(|m| m["name"].as_str() == Some("cloud-token")
                        && m["mountPath"].as_str()
                            == Some(format!("/var/run/secrets/pipelines/{role}").as_str())),
                "{name} mounts its token where its credentials read it"
            );
            // The image's entrypoint (tini, which reaps) stays: no command replaces it.
            assert!(container["command"].is_badvalue(), "{name} sets a command");
            // A plan can write what it likes: every disk of the pod is bounded.
            for volume in volumes.iter().filter(|v| !v["emptyDir"].is_badvalue()) {
                assert!(
                    volume["emptyDir"]["sizeLimit"].as_str().is_some(),
                    "{name}: emptyDir {} has no sizeLimit",
                    text_of(&volume["name"])
                );
            }
            let added = words(&container["securityContext"]["capabilities"]["add"]);
            assert!(added.contains(&"SETUID".to_owned()), "{name}: {added:?}");
            assert!(
                pod["terminationGracePeriodSeconds"].as_i64().unwrap() >= 600 + 30,
                "room for drain_seconds and stop_grace_seconds"
            );
        }
        assert_ne!(
            tool_users[0], tool_users[1],
            "{account}: one tool user per role"
        );
    }
    // The policy gives each role of an account its own token file.
    let text = config_map["data"]["pipelines.toml"].as_str().unwrap();
    for account in accounts(&policy) {
        for role in ["plan", "apply"] {
            let entry = text
                .split("[[credentials]]")
                .find(|section| section.contains(&format!("name = \"{account}-{role}\"")))
                .unwrap_or_else(|| panic!("no credentials {account}-{role}"));
            assert!(
                entry.contains(&format!(
                    "token_file = \"/var/run/secrets/pipelines/{role}/token\""
                )),
                "{account}-{role}: {entry}"
            );
        }
    }
}

#[test]
fn the_github_workflow_orchestrates_pull_requests_and_pushes_to_the_deploy_branch_with_wait() {
    let workflow = &yaml("deploy/github-actions/pipelines.yml")[0];
    let on = &workflow["on"];
    assert!(!on["pull_request"].is_badvalue(), "runs on pull requests");
    assert_eq!(words(&on["push"]["branches"]), ["main"]);
    let mut secrets = Vec::new();
    for (job, event) in [("plan", "pull_request"), ("apply", "push")] {
        let job = &workflow["jobs"][job];
        assert_eq!(
            job["if"].as_str(),
            Some(format!("github.event_name == '{event}'").as_str())
        );
        let steps = job["steps"].as_vec().unwrap();
        let orchestrate = steps
            .iter()
            .find(|step| {
                step["run"]
                    .as_str()
                    .is_some_and(|run| run.contains("pipelines orchestrate"))
            })
            .expect("a step runs pipelines orchestrate");
        let run = orchestrate["run"].as_str().unwrap();
        assert!(run.contains("--wait"), "{run}");
        assert!(
            !run.contains("BROKER_URL"),
            "the broker URL stays in the environment, off the command line: {run}"
        );
        let secret = orchestrate["env"]["PIPELINES_BROKER_URL"].as_str().unwrap();
        assert!(
            secret.contains("secrets."),
            "the orchestrator's broker login is a secret"
        );
        secrets.push(secret.to_owned());
        let checkout = steps
            .iter()
            .find(|step| {
                step["uses"]
                    .as_str()
                    .is_some_and(|uses| uses.starts_with("actions/checkout"))
            })
            .unwrap();
        assert_eq!(
            checkout["with"]["fetch-depth"].as_i64(),
            Some(0),
            "change detection needs both commits"
        );
    }
    // Pushes apply: their login is the deploy environment's, which pull requests cannot use.
    assert_ne!(
        secrets[0], secrets[1],
        "pull requests and pushes share a login"
    );
    assert!(workflow["jobs"]["plan"]["environment"].is_badvalue());
    assert_eq!(
        workflow["jobs"]["apply"]["environment"].as_str(),
        Some("deploy")
    );
    // A pull request's event carries its run's OIDC token, for `[dispatcher.oidc]`.
    let plan = &workflow["jobs"]["plan"];
    assert_eq!(plan["permissions"]["id-token"].as_str(), Some("write"));
    let plan_run = plan["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|step| step["run"].as_str())
        .find(|run| run.contains("pipelines orchestrate"))
        .unwrap();
    assert!(
        plan_run.contains("audience=pipelines") && plan_run.contains("export PIPELINES_ID_TOKEN"),
        "{plan_run}"
    );
    // Nor do the two share runners, where a pull request's job could leave a tool behind.
    let deploy_runners = |job: &Yaml| words(&job["runs-on"]).contains(&"deploy".to_owned());
    assert!(deploy_runners(&workflow["jobs"]["apply"]));
    assert!(!deploy_runners(&workflow["jobs"]["plan"]));
    let drift = &yaml("deploy/github-actions/drift.yml")[0]["jobs"]["drift"];
    assert_eq!(drift["environment"].as_str(), Some("deploy"));
    assert!(deploy_runners(drift));
    let drift_login = drift["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .find_map(|step| step["env"]["PIPELINES_BROKER_URL"].as_str())
        .unwrap();
    assert_eq!(
        drift_login, secrets[1],
        "a drift check takes the deploy login"
    );
}

/// The command lines of `directive` (`ExecStart`, `ExecStartPre`) in a unit file, continuation
/// lines joined as systemd joins them (the backslash becomes a space).
fn unit_commands(unit: &str, directive: &str) -> Vec<String> {
    let prefix = format!("{directive}=");
    let mut commands = Vec::new();
    let mut lines = unit.lines();
    while let Some(line) = lines.next() {
        let Some(first) = line.strip_prefix(&prefix) else {
            continue;
        };
        let mut command = first.to_owned();
        while let Some(joined) = command.strip_suffix('\\') {
            command = format!("{joined} {}", lines.next().unwrap_or_default());
        }
        commands.push(command);
    }
    commands
}

/// Runs a unit's `/bin/sh -c '...' "%i"` command line as systemd would for `instance`: its
/// escapes undone, `/etc/pipelines/` moved to `etc`, and the binary replaced by `etc/stand-in`.
fn run_unit_shell(command: &str, instance: &str, etc: &Path) -> std::process::Output {
    let shell = command
        .replace("$$", "$")
        .replace("%%", "%")
        .replace("%H", "host")
        .replace("\"%i\"", instance)
        .replace("%i", instance)
        .replace("/etc/pipelines/", &format!("{}/", etc.display()))
        .replace(
            "/usr/local/bin/pipelines",
            &etc.join("stand-in").display().to_string(),
        );
    let (script, arg) = shell
        .strip_prefix("/bin/sh -c '")
        .and_then(|rest| rest.rsplit_once("' "))
        .unwrap_or_else(|| panic!("not /bin/sh -c '...' INSTANCE: {shell}"));
    std::process::Command::new("/bin/sh")
        .args(["-c", script, arg.trim()])
        .output()
        .unwrap()
}

#[test]
fn systemd_units_run_the_documented_commands_and_drain_within_their_stop_timeout() {
    let dispatcher = read("deploy/systemd/pipelines-dispatcher.service");
    assert!(dispatcher.contains(
        "ExecStart=/usr/local/bin/pipelines dispatch --config /etc/pipelines/pipelines.toml"
    ));
    // Its logs, mirrors and run database are its own, not a plan tool user's to read.
    assert!(dispatcher.contains("\nStateDirectoryMode=0700\n"));
    assert!(dispatcher.contains("\nUMask=0077\n"));
    let executor = read("deploy/systemd/pipelines-executor@.service");
    let exec_start = unit_commands(&executor, "ExecStart");
    assert_eq!(exec_start.len(), 1, "{exec_start:?}");
    // Run the shell part with the instance name, as systemd would, with a stand-in for the
    // binary that prints its arguments.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stand-in"),
        "#!/bin/sh\necho \"tool_user=$PIPELINES_EXECUTOR__TOOL_USER $*\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path().join("stand-in"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let env_file = |name: &str, base: Option<u32>| {
        let base = base.map_or(String::new(), |base| {
            format!("PIPELINES_TOOL_UID_BASE={base}\n")
        });
        std::fs::write(
            dir.path().join(format!("executor-{name}.env")),
            format!("PIPELINES_BROKER_URL=amqp://x\n{base}"),
        )
        .unwrap();
    };
    env_file("eu-prod-plan", Some(61100));
    let output = run_unit_shell(&exec_start[0], "eu-prod-plan-3", dir.path());
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.contains("--account eu-prod --role plan --name host-eu-prod-plan-3"),
        "the instance name is ACCOUNT-ROLE-N: {printed}"
    );
    assert!(
        printed.starts_with("tool_user=61103:61103 execute "),
        "each instance its own tool user: {printed}"
    );
    // The check before it checks that worker: its account, role and tool user.
    let check = unit_commands(&executor, "ExecStartPre")
        .into_iter()
        .find(|command| command.contains("config check"))
        .expect("an ExecStartPre runs config check");
    let output = run_unit_shell(&check, "eu-prod-plan-3", dir.path());
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        printed.trim_end(),
        format!(
            "tool_user=61103:61103 config check {}/pipelines.toml --account eu-prod --role plan",
            dir.path().display()
        )
    );

    // Two env files with one base would give a plan's tools and an apply's tools one uid: the
    // instance refuses to start, as it does without a base.
    let guard = unit_commands(&executor, "ExecStartPre")
        .into_iter()
        .find(|command| {
            command.contains("PIPELINES_TOOL_UID_BASE") && !command.contains("config check")
        })
        .expect("an ExecStartPre checks the tool uids");
    let starts = |instance: &str| {
        let output = run_unit_shell(&guard, instance, dir.path());
        let said = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), said)
    };
    assert_eq!(starts("eu-prod-plan-3"), (true, String::new()));
    for shared in [61100, 61150, 61001] {
        env_file("eu-prod-apply", Some(shared));
        for instance in ["eu-prod-plan-3", "eu-prod-apply-1"] {
            let (started, said) = starts(instance);
            assert!(
                !started && said.contains("less than 100 apart"),
                "{instance} with bases 61100 and {shared}: {said}"
            );
        }
    }
    env_file("eu-prod-apply", Some(61200));
    assert_eq!(starts("eu-prod-plan-3"), (true, String::new()));
    assert_eq!(starts("eu-prod-apply-99"), (true, String::new()));
    for outside in ["eu-prod-plan-0", "eu-prod-plan-100", "eu-prod-plan-x"] {
        let (started, said) = starts(outside);
        assert!(
            !started && said.contains("N from 1 to 99"),
            "{outside}: {said}"
        );
    }
    // A tool uid that is already someone's (65534: nobody and nogroup) is refused.
    env_file("eu-prod-plan", Some(65500));
    assert_eq!(starts("eu-prod-plan-3"), (true, String::new()));
    let (started, said) = starts("eu-prod-plan-34");
    assert!(
        !started
            && said.contains("uid or gid 65534")
            && said.contains("belongs to a user or group"),
        "{said}"
    );
    env_file("eu-prod-plan", None);
    let (started, said) = starts("eu-prod-plan-3");
    assert!(
        !started && said.contains("has no line PIPELINES_TOOL_UID_BASE=NUMBER"),
        "{said}"
    );
    let output = run_unit_shell(&exec_start[0], "eu-prod-plan-3", dir.path());
    assert!(
        !output.status.success() && output.stdout.is_empty(),
        "without a base the worker starts: {}",
        String::from_utf8_lossy(&output.stdout)
    );

    let stop = executor
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec="))
        .unwrap();
    assert!(stop.parse::<u64>().unwrap() >= 600 + 30);

    // What a plan's code may reach of the host stays bounded.
    for directive in [
        "PrivateTmp=yes",
        "PrivateIPC=yes",
        "TemporaryFileSystem=/dev/shm:mode=1777",
        "RestrictNamespaces=yes",
        "ProtectKernelModules=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(
            executor.lines().any(|line| line == directive),
            "the executor unit lacks {directive}"
        );
    }
    let tasks: u64 = executor
        .lines()
        .find_map(|line| line.strip_prefix("TasksMax="))
        .and_then(|tasks| tasks.parse().ok())
        .expect("TasksMax");
    assert!(
        tasks > 4096,
        "TasksMax={tasks} leaves the worker no room beside its tools"
    );
}
