"""The release artifacts, built as `make dist`, `make deb`, `make image` and
`make oci` build them (into a temporary DIST_DIR), then checked:

- the tarball: its files and sums, a static binary, snippets that are the
  rendering of the example config, the filter;
- the Debian package, installed on this machine with dpkg, its files and
  modes, `systemd-analyze verify` and `security` on the unit, the installed
  binary's `check` with the env file's variables and its `serve` on a free
  loopback port; then purged, and the machine checked to be as it was;
- the container image, built with buildah into a throwaway store: its config
  (user, healthcheck, entrypoint), its two files, and the sidecar started
  from it (buildah run, chroot isolation: no container runtime runs here);
- the filter's OCI image layout: digests, media types, the compat layout
  that Istio and Envoy Gateway extract plugin.wasm from, read back by skopeo;
- the Kubernetes examples against the CRDs' schemas, and their filter
  configs through `oidc-edge check`;
- the compose example: every reference resolves, and its oidc-edge config
  passes `check`.
"""

import gzip
import hashlib
import io
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from schema import validate

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
CRDS = Path(__file__).parent / "crds"
with open(ROOT / "sidecar" / "Cargo.toml", "rb") as _f:
    VERSION = tomllib.load(_f)["package"]["version"]
SUDO = [] if os.geteuid() == 0 else ["sudo"]
TARGET_WASM = ROOT / "target/wasm32-wasip1/release/oidc_edge_filter.wasm"


def run(cmd, *, ok=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if ok:
        assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r


def env_refs(node) -> set[str]:
    """Every variable a config names as {env: NAME}."""
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            return {node["env"]}
        return set().union(*(env_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(env_refs(v) for v in node)) if node else set()
    return set()


def placeholders(binary: Path, names) -> dict:
    """A throwaway value per secret, valid as a cookie secret too."""
    return {name: run([binary, "secret"]).stdout.strip() for name in names}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_status(url: str, want: int, seconds: float = 15) -> int | None:
    deadline = time.monotonic() + seconds
    status = None
    while time.monotonic() < deadline:
        status = http_status(url)
        if status == want:
            return status
        time.sleep(0.2)
    return status


def offline_config(config: dict, tmp: Path) -> tuple[Path, int]:
    """The config on a free port (same listen host), with the provider mapped
    to a closed loopback port: the sidecar serves, and calls nobody outside."""
    config = json.loads(json.dumps(config))
    port, closed = free_port(), free_port()
    host = config["provider"]["issuer"].split("://", 1)[1].split("/", 1)[0]
    config["provider"]["callouts"] = {host: f"127.0.0.1:{closed}"}
    listen_host = config.setdefault("sidecar", {}).get("listen", "127.0.0.1:4180").rsplit(":", 1)[0]
    config["sidecar"]["listen"] = f"{listen_host}:{port}"
    path = tmp / "offline.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o644)
    return path, port


def stop(proc: subprocess.Popen, group: bool = False) -> int:
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        return proc.wait(timeout=10)


def check_version(text: str) -> str:
    """`oidc-edge --version`: this version, and a commit of this checkout
    (HEAD when built, possibly an ancestor of HEAD by now), or "unknown"
    where git cannot read the checkout."""
    m = re.fullmatch(r"oidc-edge (\S+) \(commit (\S+)\)", text.strip())
    assert m and m.group(1) == VERSION, text
    commit = m.group(2)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        assert commit == "unknown", text
    else:
        assert re.fullmatch(r"[0-9a-f]{7,40}", commit), text
        ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=ROOT)
        assert ancestor.returncode == 0, f"{text}: not a commit of this checkout's history"
    return commit


# --- the builds --------------------------------------------------------------


@pytest.fixture(scope="session")
def dist_env(tmp_path_factory):
    return {**os.environ, "DIST_DIR": str(tmp_path_factory.mktemp("dist"))}


@pytest.fixture(scope="session")
def tarball(dist_env) -> Path:
    out = run([ROOT / "scripts/dist.sh"], env=dist_env, timeout=3600)
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.name == f"oidc-edge-{VERSION}-x86_64-linux.tar.gz" and path.is_file(), out.stdout
    return path


@pytest.fixture(scope="session")
def stage(tarball) -> Path:
    """The tree the tarball was made from (the tests read the tarball itself too)."""
    return Path(str(tarball).removesuffix(".tar.gz"))


@pytest.fixture(scope="session")
def binary(stage) -> Path:
    return stage / "bin" / "oidc-edge"


# --- the tarball -------------------------------------------------------------


def test_tarball_holds_a_static_binary_the_filter_snippets_examples_and_sums(tarball, binary, tmp_path):
    name = tarball.name.removesuffix(".tar.gz")
    assert (tarball.parent / f"{tarball.name}.sha256").read_text().split()[0] == hashlib.sha256(tarball.read_bytes()).hexdigest()
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
        for m in members:
            assert m.name == name or m.name.startswith(name + "/"), m.name
            assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", ""), (m.name, m.uid, m.uname)
        tar.extractall(tmp_path, filter="data")
    tree = tmp_path / name
    files = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    for want in [
        "bin/oidc-edge", "lib/oidc_edge_filter.wasm", "SHA256SUMS", "README.md",
        "snippets/nginx/http.conf", "snippets/nginx/protect.conf", "snippets/nginx/sidecar.conf",
        "snippets/nginx/to-sidecar.conf", "snippets/nginx/upstream-headers.conf",
        "snippets/caddy/oidc-edge.caddy", "snippets/traefik/oidc-edge.yml",
        "examples/config.yaml", "examples/env", "examples/demo.yaml",
        "examples/compose/compose.yaml", "examples/compose/Caddyfile", "examples/compose/oidc-edge.yaml",
        "examples/compose/oidc-edge.caddy", "examples/compose/env.example",
        "examples/kubernetes/istio-wasmplugin.yaml", "examples/kubernetes/envoy-gateway-extension-policy.yaml",
        "systemd/oidc-edge.service", "docs/install.md", "docs/configuration.md", "docs/sidecar.md",
    ]:
        assert want in files, f"{want} is not in the tarball"
    assert (tree / "bin/oidc-edge").stat().st_mode & 0o777 == 0o755

    summed = {}
    for line in (tree / "SHA256SUMS").read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        summed[path] = digest
    assert set(summed) == files - {"SHA256SUMS"}
    run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=tree)

    kind = run(["file", "-b", tree / "bin/oidc-edge"]).stdout
    assert "statically linked" in kind or "static-pie linked" in kind, kind
    ldd = run(["ldd", tree / "bin/oidc-edge"], ok=False)
    assert "statically linked" in ldd.stdout + ldd.stderr or "not a dynamic executable" in ldd.stdout + ldd.stderr
    check_version(run([tree / "bin/oidc-edge", "--version"]).stdout)

    wasm = (tree / "lib/oidc_edge_filter.wasm").read_bytes()
    assert wasm[:4] == b"\0asm" and wasm == TARGET_WASM.read_bytes()

    # The snippets are what `render` writes for the example config, today.
    config = tree / "examples/config.yaml"
    secrets = placeholders(binary, env_refs(yaml.safe_load(config.read_text())))
    for proxy in ("nginx", "caddy", "traefik"):
        out = tmp_path / "render" / proxy
        run([binary, "render", proxy, "--config", config, "--out", out], env={**os.environ, **secrets})
        for rendered in out.iterdir():
            assert (tree / "snippets" / proxy / rendered.name).read_text() == rendered.read_text(), rendered.name
        assert {p.name for p in out.iterdir()} == {p.name for p in (tree / "snippets" / proxy).iterdir()}


# --- the Debian package ------------------------------------------------------

DEB_FILES = {
    # path: (mode, is a conffile)
    "/usr/bin/oidc-edge": (0o755, False),
    "/usr/lib/oidc-edge/oidc_edge_filter.wasm": (0o644, False),
    "/lib/systemd/system/oidc-edge.service": (0o644, False),
    "/etc/oidc-edge/config.yaml": (0o644, True),
    "/etc/oidc-edge/env": (0o600, True),
    "/usr/share/oidc-edge/snippets/nginx/protect.conf": (0o644, False),
    "/usr/share/oidc-edge/snippets/caddy/oidc-edge.caddy": (0o644, False),
    "/usr/share/oidc-edge/snippets/traefik/oidc-edge.yml": (0o644, False),
    "/usr/share/doc/oidc-edge/copyright": (0o644, False),
    "/usr/share/doc/oidc-edge/install.md": (0o644, False),
    "/usr/share/doc/oidc-edge/examples/config.yaml": (0o644, False),
    "/usr/share/doc/oidc-edge/examples/compose/compose.yaml": (0o644, False),
    "/usr/share/doc/oidc-edge/examples/kubernetes/istio-wasmplugin.yaml": (0o644, False),
}
LEFT_BEHIND = ["/usr/bin/oidc-edge", "/usr/lib/oidc-edge", "/usr/share/oidc-edge", "/usr/share/doc/oidc-edge",
               "/etc/oidc-edge", "/lib/systemd/system/oidc-edge.service"]

# What the unit must say, key by key (a key may appear more than once).
UNIT_MUST = {
    "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "RestrictNamespaces": "yes", "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
    "SystemCallFilter": "@system-service", "SystemCallArchitectures": "native", "CapabilityBoundingSet": "",
    "AmbientCapabilities": "", "UMask": "0077", "Restart": "on-failure",
    "EnvironmentFile": "-/etc/oidc-edge/env",
    "ExecStartPre": "/usr/bin/oidc-edge check --config /etc/oidc-edge/config.yaml",
    "ExecStart": "/usr/bin/oidc-edge serve --config /etc/oidc-edge/config.yaml",
}


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def env_file_names(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^([A-Za-z_][A-Za-z0-9_]*)=", text, re.M)}


@pytest.fixture(scope="session")
def deb(tarball, dist_env) -> Path:
    out = run([ROOT / "scripts/deb.sh"], env=dist_env, timeout=3600)
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.name == f"oidc-edge_{VERSION}_amd64.deb" and path.is_file(), out.stdout
    return path


def test_deb_metadata_and_contents(deb):
    info = run(["dpkg-deb", "--field", deb, "Package", "Version", "Architecture", "Recommends"]).stdout
    assert "Package: oidc-edge" in info and f"Version: {VERSION}" in info and "Architecture: amd64" in info
    assert "ca-certificates" in info
    contents = run(["dpkg-deb", "--contents", deb]).stdout.splitlines()
    listed = {}
    for line in contents:
        perms, owner, _size, _date, _time, path = line.split(maxsplit=5)
        listed[path.removeprefix(".")] = (perms, owner)
    for path, (mode, _) in DEB_FILES.items():
        assert path in listed, f"{path} is not in the package"
        perms, owner = listed[path]
        assert owner == "root/root", (path, owner)
        assert perms == "-" + "".join("rwx"[i % 3] if mode & (1 << (8 - i)) else "-" for i in range(9)), (path, perms)
    conffiles = run(["dpkg-deb", "--info", deb, "conffiles"]).stdout.split()
    assert sorted(conffiles) == sorted(p for p, (_, conf) in DEB_FILES.items() if conf)


def test_deb_installs_verifies_runs_and_purges(deb, binary, tmp_path):
    installed = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", "oidc-edge"], capture_output=True, text=True)
    assert "installed" not in installed.stdout, (
        "oidc-edge is already installed on this machine; this test installs and purges its own package")
    for path in LEFT_BEHIND:
        assert not os.path.lexists(path), f"{path} exists before the install"
    try:
        run(SUDO + ["dpkg", "-i", deb], timeout=300)
        check_installed(binary, tmp_path)
    finally:
        run(SUDO + ["dpkg", "--purge", "oidc-edge"], timeout=300)
    for path in LEFT_BEHIND:
        assert not os.path.lexists(path), f"{path} is left after dpkg --purge"
    status = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", "oidc-edge"], capture_output=True, text=True)
    assert "installed" not in status.stdout


def test_systemd_analyze_reports_what_the_unit_check_looks_for(tmp_path):
    """The install test takes silence from `systemd-analyze verify` as a pass:
    it must speak up, on this systemd, about a misspelled key or value."""
    unit = tmp_path / "oidc-edge-broken.service"
    text = (PACKAGING / "oidc-edge.service").read_text()
    text = text.replace("ProtectSystem=strict", "ProtectSystem=strikt").replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    unit.write_text(text.replace("/usr/bin/oidc-edge", "/bin/true"))
    out = run(["systemd-analyze", "verify", unit], ok=False)
    said = out.stdout + out.stderr
    assert "strikt" in said and "NoNewPrivilege" in said, said


def check_installed(binary: Path, tmp_path: Path) -> None:
    for path, (mode, _) in DEB_FILES.items():
        st = os.stat(path)
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, 0, 0), (path, oct(st.st_mode), st.st_uid)
    conffiles = run(["dpkg-query", "-W", "-f", "${Conffiles}", "oidc-edge"]).stdout
    assert "/etc/oidc-edge/config.yaml" in conffiles and "/etc/oidc-edge/env" in conffiles

    # systemd-analyze only warns about a key it cannot parse; any line about
    # the unit is a mistake in it.
    unit = "/lib/systemd/system/oidc-edge.service"
    verify = run(["systemd-analyze", "verify", unit], ok=False)
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr
    security = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", unit], ok=False)
    m = re.search(r"Overall exposure level for oidc-edge\.service: ([0-9.]+)", security.stdout + security.stderr)
    assert m and float(m.group(1)) <= 2.0, security.stdout[-2000:] + security.stderr
    settings = unit_settings(Path(unit).read_text())
    for key, value in UNIT_MUST.items():
        assert value in settings.get(key, []), f"{key}={value} is not in the unit ({settings.get(key)})"

    installed = run(["/usr/bin/oidc-edge", "--version"]).stdout
    check_version(installed)
    assert installed == run([binary, "--version"]).stdout

    # The env file names exactly the variables the config reads; unfilled,
    # `check` (the unit's ExecStartPre) keeps the service down.
    config_path = Path("/etc/oidc-edge/config.yaml")
    config = yaml.safe_load(config_path.read_text())
    names = env_file_names(Path("/etc/oidc-edge/env").read_text())
    assert names == env_refs(config), (names, env_refs(config))
    empty = {**os.environ, **{n: "" for n in names}}
    refused = run(["/usr/bin/oidc-edge", "check", "--config", config_path], ok=False, env=empty)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    secrets = placeholders(Path("/usr/bin/oidc-edge"), names)
    env = {**os.environ, **secrets}
    out = run(["/usr/bin/oidc-edge", "check", "--config", config_path], env=env).stdout
    assert "valid" in out, out

    # The installed binary serving the installed config (on a free port, the
    # provider unreachable on loopback): alive, not ready, stops on SIGTERM.
    offline, port = offline_config(config, tmp_path)
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(["/usr/bin/oidc-edge", "serve", "--config", str(offline)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_status(f"http://127.0.0.1:{port}/healthz", 200) == 200, (tmp_path / "serve.log").read_text()
        assert http_status(f"http://127.0.0.1:{port}/readyz") == 503
        health = run(["/usr/bin/oidc-edge", "health", "--config", offline], ok=False, env=env)
        assert health.returncode == 0, health.stdout + health.stderr
    finally:
        code = stop(proc)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()
    down = run(["/usr/bin/oidc-edge", "health", "--address", f"127.0.0.1:{port}"], ok=False)
    assert down.returncode != 0, "`health` answers 0 with nothing listening"


# --- the container image -----------------------------------------------------


@pytest.fixture(scope="session")
def image(tarball, dist_env, tmp_path_factory):
    storage = tmp_path_factory.mktemp("containers")
    env = {**dist_env, "IMAGE_STORAGE": str(storage), "BUILDAH_ISOLATION": "chroot"}
    buildah = ["buildah", "--root", storage / "root", "--runroot", storage / "run", "--storage-driver", "vfs"]
    try:
        out = run([ROOT / "scripts/image.sh"], env=env, timeout=3600)
        yield out.stdout.strip().splitlines()[-1], buildah, env
    finally:
        subprocess.run([str(c) for c in buildah + ["rm", "--all"]], capture_output=True, env=env)
        subprocess.run([str(c) for c in buildah + ["rmi", "--all", "--force"]], capture_output=True, env=env)
        shutil.rmtree(storage, ignore_errors=True)


def test_image_config(image, binary, dist_env):
    name, buildah, env = image
    assert name == f"localhost/oidc-edge:{VERSION}"
    info = json.loads(run(buildah + ["inspect", "--type", "image", name], env=env).stdout)
    assert json.loads(info["Manifest"])["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    config = info["Docker"]["config"]
    assert config["User"] == "65532:65532"
    assert config["Healthcheck"]["Test"] == ["CMD", "/usr/bin/oidc-edge", "health"]
    assert config["Entrypoint"] == ["/usr/bin/oidc-edge"] and config["Cmd"] == ["serve"]
    assert "4180/tcp" in config["ExposedPorts"]
    assert "OIDC_EDGE_CONFIG=/etc/oidc-edge/config.yaml" in config["Env"]
    assert "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in config["Env"]
    assert config["Labels"]["org.opencontainers.image.version"] == VERSION
    assert config["Labels"]["org.opencontainers.image.revision"] == check_version(run([binary, "--version"]).stdout)

    # The archive for `docker load`: the same image, tagged.
    archive = Path(dist_env["DIST_DIR"]) / f"oidc-edge-{VERSION}-image.tar"
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == [name]
        image_config = json.load(tar.extractfile(manifest[0]["Config"]))
    assert image_config["config"]["Healthcheck"]["Test"] == config["Healthcheck"]["Test"]


def test_image_holds_two_files_and_runs_the_sidecar(image, binary, tmp_path):
    name, buildah, env = image
    container = run(buildah + ["from", "--quiet", name], env=env).stdout.strip()
    try:
        root = Path(run(buildah + ["mount", container], env=env).stdout.strip())
        files = {p.relative_to(root).as_posix(): p.stat().st_mode & 0o7777 for p in root.rglob("*") if p.is_file()}
        assert files == {"usr/bin/oidc-edge": 0o755, "etc/ssl/certs/ca-certificates.crt": 0o644}, files
        assert (root / "usr/bin/oidc-edge").read_bytes() == binary.read_bytes()
        run(buildah + ["umount", container], env=env)

        version = run(buildah + ["run", container, "--", "/usr/bin/oidc-edge", "--version"], env=env).stdout
        assert version == run([binary, "--version"]).stdout

        # The compose example's config (listening on 0.0.0.0, as in a
        # container), mounted as a user mounts it; the process runs as the
        # image's user (65532) on the host's network.
        config = yaml.safe_load((PACKAGING / "compose" / "oidc-edge.yaml").read_text())
        offline, port = offline_config(config, tmp_path)
        secrets = placeholders(binary, env_refs(config))
        flags = ["--network", "host", "-v", f"{offline}:/etc/oidc-edge/config.yaml:ro"]
        flags += [a for k, v in secrets.items() for a in ("-e", f"{k}={v}")]
        log = open(tmp_path / "serve.log", "w")
        proc = subprocess.Popen([str(c) for c in buildah + ["run", *flags, container, "--", "/usr/bin/oidc-edge", "serve"]],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            assert wait_status(f"http://127.0.0.1:{port}/healthz", 200, 30) == 200, (tmp_path / "serve.log").read_text()
            assert http_status(f"http://127.0.0.1:{port}/readyz") == 503
            # The HEALTHCHECK's command, as the engine runs it: inside, with
            # the image's OIDC_EDGE_CONFIG.
            health = run(buildah + ["run", *flags, container, "--", "/usr/bin/oidc-edge", "health"], env=env, ok=False)
            assert health.returncode == 0, health.stdout + health.stderr
        finally:
            stop(proc, group=True)
            log.close()
        assert "listening" in (tmp_path / "serve.log").read_text()
        assert http_status(f"http://127.0.0.1:{port}/healthz") is None, "the sidecar outlived its container"
    finally:
        subprocess.run([str(c) for c in buildah + ["rm", container]], capture_output=True, env=env)


# --- the filter's OCI image ----------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_blob(layout: Path, desc: dict) -> bytes:
    algo, hexdigest = desc["digest"].split(":")
    data = (layout / "blobs" / algo / hexdigest).read_bytes()
    assert (len(data), sha256(data)) == (desc["size"], desc["digest"]), desc
    return data


@pytest.fixture(scope="session")
def oci_layout(tmp_path_factory) -> Path:
    run([ROOT / "scripts/build-wasm.sh"], timeout=3600)
    out = tmp_path_factory.mktemp("oci") / f"oidc-edge-filter-{VERSION}-oci"
    run(["python3", ROOT / "scripts/oci-wasm.py", "--out", out])
    return out


def test_oci_layout_is_the_compat_variant_istio_and_envoy_gateway_pull(oci_layout, tmp_path):
    assert json.loads((oci_layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((oci_layout / "index.json").read_text())
    assert index["schemaVersion"] == 2 and len(index["manifests"]) == 1
    desc = index["manifests"][0]
    assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == VERSION
    manifest = json.loads(read_blob(oci_layout, desc))
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == desc["mediaType"]
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    config = json.loads(read_blob(oci_layout, manifest["config"]))

    # What both fetchers do (extractOCIStandardImage): the last layer must be
    # an OCI tar+gzip layer, and the file named plugin.wasm in it is the module.
    assert len(manifest["layers"]) == 1
    layer = manifest["layers"][-1]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    tar_bytes = gzip.decompress(read_blob(oci_layout, layer))
    assert config["rootfs"] == {"type": "layers", "diff_ids": [sha256(tar_bytes)]}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        names = tar.getnames()
        assert names == ["plugin.wasm"], names
        module = tar.extractfile("plugin.wasm").read()
    assert module == TARGET_WASM.read_bytes() and module[:4] == b"\0asm"
    # The alternative "oci" variant would need two layers and its own media types.
    assert all(layer["mediaType"] != "application/vnd.module.wasm.content.layer.v1+wasm" for layer in manifest["layers"])

    # Read back by a registry client: skopeo verifies every digest it copies.
    ref = f"oci:{oci_layout}:{VERSION}"
    raw = run(["skopeo", "inspect", "--raw", ref]).stdout
    assert sha256(raw.encode()) == desc["digest"]
    seen = json.loads(run(["skopeo", "inspect", ref]).stdout)
    assert seen["Layers"] == [layer["digest"]] and seen["Labels"]["org.opencontainers.image.version"] == VERSION
    run(["skopeo", "copy", "--quiet", ref, f"oci:{tmp_path / 'copy'}:{VERSION}"])

    # The same module gives the same image.
    again = tmp_path / "again"
    run(["python3", ROOT / "scripts/oci-wasm.py", "--out", again])
    assert json.loads((again / "index.json").read_text()) == index


# --- the Kubernetes examples ------------------------------------------------


def load_schemas() -> dict:
    schemas = {}
    for path in CRDS.glob("*.json"):
        doc = json.loads(path.read_text())
        schemas[(doc["apiVersion"], doc["kind"])] = doc["schema"]
    return schemas


def k8s_docs(name: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((PACKAGING / "kubernetes" / name).read_text()) if d]
    schemas = load_schemas()
    for doc in docs:
        meta = doc.get("metadata", {})
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta.get("name", "")), meta
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta.get("namespace", "")), meta
        if (doc["apiVersion"], doc["kind"]) == ("v1", "Secret"):
            assert set(doc) <= {"apiVersion", "kind", "metadata", "type", "stringData", "data"}
            assert all(isinstance(v, str) for v in doc["stringData"].values())
            continue
        schema = schemas.get((doc["apiVersion"], doc["kind"]))
        assert schema, f"no schema for {doc['apiVersion']} {doc['kind']} in tests/packaging/crds"
        # Every object has these; CRDs may or may not spell them out.
        errors = validate({k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}, schema)
        assert not errors, f"{name}: {doc['kind']} {meta['name']}:\n" + "\n".join(errors)
    return docs


def test_schema_check_refuses_what_kubernetes_would():
    """The manifests pass because they are right, not because nothing is checked."""
    schemas = load_schemas()
    plugin = schemas[("extensions.istio.io/v1alpha1", "WasmPlugin")]
    good = {"spec": {"url": "oci://r/x:1", "failStrategy": "FAIL_CLOSE", "vmConfig": {"env": [{"name": "A", "valueFrom": "HOST"}]}}}
    assert validate(good, plugin) == []
    for bad in [
        {"spec": {"url": "oci://r/x:1", "failStrategy": "FAIL_CLOSED"}},           # Envoy's spelling, not Istio's
        {"spec": {"url": "oci://r/x:1", "failstrategy": "FAIL_CLOSE"}},            # unknown field
        {"spec": {"failStrategy": "FAIL_CLOSE"}},                                  # url is required
        {"spec": {"url": "oci://r/x:1", "vmConfig": {"env": [{"valueFrom": "HOST"}]}}},   # env needs a name
        {"spec": {"url": "oci://r/x:1", "priority": "high"}},                      # integer
    ]:
        assert validate(bad, plugin), bad
    policy = schemas[("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy")]
    assert validate({"spec": {"wasm": [{"code": {"type": "OCI"}}]}}, policy)
    assert validate({"spec": {"wasm": [{"code": {"type": "Image"}, "failOpen": "no"}]}}, policy)
    proxy = schemas[("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy")]
    assert validate({"spec": {"logging": {}}}, proxy), "a pruned path must not pass unchecked"


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def check_filter_config(binary: Path, config: dict, tmp_path: Path) -> None:
    path = tmp_path / "filter.json"
    path.write_text(json.dumps(config))
    out = run([binary, "check", "--config", path], env={**os.environ, **placeholders(binary, env_refs(config))})
    assert "valid" in out.stdout


def issuer_host(config: dict) -> str:
    return config["provider"]["issuer"].split("://", 1)[1].split("/", 1)[0]


def test_istio_wasmplugin(binary, tmp_path):
    docs = k8s_docs("istio-wasmplugin.yaml")
    [plugin] = by_kind(docs, "WasmPlugin")
    [secret] = by_kind(docs, "Secret")
    spec = plugin["spec"]
    # The CRD's CEL rules, by hand.
    assert sum(k in spec for k in ("selector", "targetRef", "targetRefs")) <= 1
    assert all(e.get("valueFrom") != "HOST" or "value" not in e for e in spec["vmConfig"]["env"])

    assert spec["url"].startswith("oci://") and spec["url"].endswith(f":{VERSION}")
    assert spec["failStrategy"] == "FAIL_CLOSE"
    config = spec["pluginConfig"]
    check_filter_config(binary, config, tmp_path)
    host_env = {e["name"] for e in spec["vmConfig"]["env"] if e.get("valueFrom") == "HOST"}
    assert env_refs(config) <= host_env
    assert len(secret["stringData"]) >= len(env_refs(config))

    # provider.callouts names the cluster Istio makes for the ServiceEntry's
    # port, and the DestinationRule originates TLS on it.
    host = issuer_host(config)
    cluster = config["provider"]["callouts"][host]
    m = re.fullmatch(r"outbound\|(\d+)\|\|(.+)", cluster)
    assert m and m.group(2) == host, cluster
    port = int(m.group(1))
    [entry] = [d for d in by_kind(docs, "ServiceEntry") if host in d["spec"]["hosts"]]
    assert port in [p["number"] for p in entry["spec"]["ports"]]
    [rule] = [d for d in by_kind(docs, "DestinationRule") if d["spec"]["host"] == host]
    tls = [s["tls"] for s in rule["spec"]["trafficPolicy"]["portLevelSettings"] if s["port"]["number"] == port]
    assert tls and tls[0]["mode"] == "SIMPLE" and tls[0]["sni"] == host


def test_envoy_gateway_extension_policy(binary, tmp_path):
    docs = k8s_docs("envoy-gateway-extension-policy.yaml")
    [policy] = by_kind(docs, "EnvoyExtensionPolicy")
    [proxy] = by_kind(docs, "EnvoyProxy")
    [patch] = by_kind(docs, "EnvoyPatchPolicy")
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    spec = policy["spec"]
    assert ("targetRef" in spec) != ("targetRefs" in spec)
    [wasm] = spec["wasm"]
    assert wasm["code"]["type"] == "Image" and "image" in wasm["code"] and "http" not in wasm["code"]
    assert wasm["code"]["image"]["url"].endswith(f":{VERSION}")
    assert wasm["failOpen"] is False
    config = wasm["config"]
    check_filter_config(binary, config, tmp_path)

    # Each secret: a Secret key -> the Envoy container's env -> hostKeys -> the VM.
    assert env_refs(config) <= set(wasm["env"]["hostKeys"])
    container_env = {e["name"]: e for e in proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"]}
    for key in wasm["env"]["hostKeys"]:
        ref = container_env[key]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"], ref

    # provider.callouts names the cluster the patch adds, which dials the issuer's host over TLS.
    host = issuer_host(config)
    cluster_name = config["provider"]["callouts"][host]
    [added] = [p for p in patch["spec"]["jsonPatches"] if p["name"] == cluster_name]
    assert added["type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    assert added["operation"]["op"] == "add" and added["operation"]["path"] == ""
    cluster = added["operation"]["value"]
    assert cluster["name"] == cluster_name
    [endpoint] = [e["endpoint"] for ep in cluster["load_assignment"]["endpoints"] for e in ep["lb_endpoints"]]
    assert endpoint["address"]["socket_address"]["address"] == host
    assert cluster["transport_socket"]["typed_config"]["sni"] == host
    targets = [(t["kind"], t["name"]) for t in spec["targetRefs"]]
    assert (patch["spec"]["targetRef"]["kind"], patch["spec"]["targetRef"]["name"]) in targets


# --- the compose example ---------------------------------------------------------

COMPOSE = PACKAGING / "compose"


def caddy_upstreams(node, guarded: bool = False) -> list[tuple[str, str]]:
    """Every reverse_proxy dial in Caddy's JSON: "auth" for the forward_auth
    call itself, "guarded" when such a call runs before it unconditionally
    (earlier in the same handler or route list, not behind a matcher),
    else "open"."""
    if isinstance(node, list):
        return [found for item in node for found in caddy_upstreams(item, guarded)]
    if not isinstance(node, dict):
        return []
    if node.get("handler") == "reverse_proxy":
        kind = "auth" if node.get("rewrite", {}).get("uri") == "/oauth2/forward_auth" else "guarded" if guarded else "open"
        return [(u["dial"], kind) for u in node.get("upstreams", [])]
    found = []
    for key, value in node.items():
        if key in ("routes", "handle") and isinstance(value, list):
            state = guarded
            for item in value:
                found += caddy_upstreams(item, state)
                unconditional = not (isinstance(item, dict) and item.get("match"))
                state = state or (unconditional and any(k == "auth" for _, k in caddy_upstreams(item)))
        else:
            found += caddy_upstreams(value, guarded)
    return found


def test_compose_example_is_consistent(binary, tmp_path):
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    services = compose["services"]
    assert services["pocket-id"]["image"].startswith("ghcr.io/pocket-id/pocket-id:")
    assert services["oidc-edge"]["image"] == f"localhost/oidc-edge:{VERSION}"

    # Every bind mount's source is here; every named volume is declared.
    mounts = {}
    for name, svc in services.items():
        for spec in svc.get("volumes", []):
            source, target = spec.split(":")[:2]
            if source.startswith("./"):
                assert (COMPOSE / source).is_file(), f"{name} mounts {source}, which is not in packaging/compose"
            else:
                assert source in compose.get("volumes", {}), f"{name} uses volume {source}, not declared"
            mounts[(name, target)] = source
    config_source = mounts[("oidc-edge", "/etc/oidc-edge/config.yaml")]
    assert mounts[("caddy", "/etc/caddy/Caddyfile")] == "./Caddyfile"
    assert mounts[("caddy", "/etc/caddy/oidc-edge.caddy")] == "./oidc-edge.caddy"

    # ${VAR} in compose.yaml comes from .env, whose template lists exactly those.
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", (COMPOSE / "compose.yaml").read_text()))
    assert used == env_file_names((COMPOSE / "env.example").read_text())

    config = yaml.safe_load((COMPOSE / config_source).read_text())
    assert env_refs(config) <= set(services["oidc-edge"].get("environment", {}))
    run([binary, "check", "--config", COMPOSE / config_source],
        env={**os.environ, **placeholders(binary, env_refs(config))})

    # The Caddyfile as Caddy reads it: every upstream is a service, on a
    # network Caddy shares; the sidecar's port is the one it listens on;
    # every protected service is behind the forward_auth.
    adapted = run([ROOT / ".venv/bin/caddy", "adapt", "--config", COMPOSE / "Caddyfile", "--adapter", "caddyfile"],
                  env={**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)})
    caddy = json.loads(adapted.stdout)
    networks = {name: set(svc.get("networks", [])) for name, svc in services.items()}
    listen_port = config["sidecar"]["listen"].rsplit(":", 1)[1]
    upstreams = caddy_upstreams(caddy)
    for dial, _ in upstreams:
        host, port = dial.rsplit(":", 1)
        assert host in services, f"Caddy proxies to {dial}: no such service"
        assert networks[host] & networks["caddy"], f"{host} shares no network with caddy"
        if host == "oidc-edge":
            assert port == listen_port
    by_kind_ = {kind: {dial.split(":")[0] for dial, k in upstreams if k == kind} for kind in ("auth", "guarded", "open")}
    assert by_kind_ == {"auth": {"oidc-edge"}, "guarded": {"whoami", "admin", "media"}, "open": {"oidc-edge", "pocket-id"}}, upstreams
    protected = by_kind_["guarded"]
    for name in protected:
        assert "ports" not in services[name], f"{name} is published around the gate"
        assert "oidc-edge" not in networks[name] and networks[name] <= networks["caddy"]
    site_hosts = {h for server in caddy["apps"]["http"]["servers"].values() for route in server["routes"]
                  for match in route.get("match", []) for h in match.get("host", [])}
    assert {r["host"] for r in config["routes"]} | {issuer_host(config)} <= site_hosts

    # The provider is called through Caddy, which serves the issuer's host.
    target = config["provider"]["callouts"][issuer_host(config)]
    assert target.split(":")[0] == "caddy" and networks["caddy"] & networks["oidc-edge"]

    # Only Caddy's fixed address is trusted, and it is on the edge network.
    [(net_name, caddy_net)] = [(n, v) for n, v in services["caddy"]["networks"].items() if v and "ipv4_address" in v]
    subnet = ipaddress.ip_network(compose["networks"][net_name]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(caddy_net["ipv4_address"]) in subnet
    assert config["sidecar"]["trusted_proxies"] == [caddy_net["ipv4_address"]]

    # oidc-edge.caddy is today's rendering of the config for this layout.
    out = tmp_path / "render"
    run([binary, "render", "caddy", "--config", COMPOSE / config_source, "--sidecar", f"oidc-edge:{listen_port}",
         "--out", out], env={**os.environ, **placeholders(binary, env_refs(config))})
    assert (out / "oidc-edge.caddy").read_text() == (COMPOSE / "oidc-edge.caddy").read_text(), (
        "packaging/compose/oidc-edge.caddy is stale: render it again (see oidc-edge.yaml)")
