"""Static checks of the deploy files against the real binaries.

docker-compose.yml, deploy/kubernetes/, deploy/Dockerfile and
docs/operations.md name flags, WARRANT_* variables, ports, topics and files
of Warrant's binaries. Nothing runs them in CI (there is no Docker or
Kubernetes here), so a renamed flag or a misspelt variable would only show
up in a failed deployment. These tests read each binary's `--help` (clap
prints every flag with `[env: WARRANT_X=]` and `[default: ...]`) and check
the deploy files against it, and load the example configuration with intake's
real loaders. Each checker is also run on a deliberately broken snippet, so
the checks are known to catch what they claim to.

Runs after `cargo test` (scripts/test.sh), so the debug binaries are usually
built; a missing or outdated one is built with `cargo build -q -p <crate>`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "kubernetes"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
EXAMPLES = REPO / "deploy" / "examples"
OPERATIONS = REPO / "docs" / "operations.md"
KAFKA_SH = REPO / "deploy" / "kafka.sh"
CHAOS = REPO / "tests" / "chaos"

BINARIES = ("warrant-intake", "warrant-projector", "warrant-replay", "warrant-notifier")
# The KafkaArgs flag of each Warrant topic.
TOPIC_FLAGS = (
    "--log-topic",
    "--proposals-topic",
    "--signals-topic",
    "--dead-letter-topic",
    "--rulesets-topic",
    "--principals-topic",
)
# Env vars whose value is a file the binary reads, and a directory it writes.
READ_FILES = ("WARRANT_RULESET", "WARRANT_PRINCIPALS", "WARRANT_NOTIFIER_CHANNELS")
WRITE_DIRS = ("WARRANT_PROJECTOR_DATA", "WARRANT_NOTIFIER_DATA")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")


# --------------------------------------------------------------- binaries ----


def target_dir() -> Path:
    configured = os.environ.get("CARGO_TARGET_DIR")
    if not configured:
        return REPO / "target"
    path = Path(configured)
    return path if path.is_absolute() else REPO / path


def newest_source_mtime() -> float:
    """Newest mtime of anything a binary is built from (all crates: they
    depend on each other, and KafkaArgs lives in warrant-kafka)."""
    paths = [REPO / "Cargo.lock", REPO / "Cargo.toml"]
    for crate in (REPO / "crates").iterdir():
        paths.append(crate / "Cargo.toml")
        paths.extend((crate / "src").rglob("*.rs"))
    return max(p.stat().st_mtime for p in paths if p.exists())


_built: dict[str, Path] = {}


def binary(name: str) -> Path:
    """The debug binary `name`, built first when missing or older than the
    sources (a stale --help would check the files against the wrong flags)."""
    if name in _built:
        return _built[name]
    path = target_dir() / "debug" / name
    if not path.exists() or path.stat().st_mtime < newest_source_mtime():
        cargo = shutil.which("cargo")
        assert cargo, f"{path} is missing or outdated and cargo is not on PATH to build it"
        subprocess.run([cargo, "build", "-q", "-p", name], cwd=REPO, check=True)
    assert path.exists(), f"cargo build -p {name} did not produce {path}"
    _built[name] = path
    return path


def clean_env() -> dict[str, str]:
    """The environment without WARRANT_* (they would show up in --help as
    values and change the defaults the binaries would run with)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARRANT_")}
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "400"
    return env


@dataclasses.dataclass
class Option:
    flag: str
    env: str | None = None
    default: str | None = None
    takes_value: bool = False
    equals_only: bool = False  # `--flag[=<VALUE>]`: a value only after "="


@dataclasses.dataclass
class Help:
    command: str  # "warrant-intake", or "warrant-replay export"
    options: dict[str, Option]  # by flag, e.g. "--listen"
    required: set[str]  # flags the usage line requires
    subcommands: set[str]

    @property
    def envs(self) -> dict[str, Option]:
        return {o.env: o for o in self.options.values() if o.env}

    def default(self, flag: str) -> str:
        option = self.options.get(flag)
        assert option and option.default is not None, f"{self.command} --help has no default for {flag}"
        return option.default


# "  -q, --quiet", "      --listen <LISTEN>", "      --ingress[=<INGRESS>]", and
# in clap's compact form the description (with [env: ...]) on the same line.
OPTION_LINE = re.compile(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)(\[=<[^>]+>\])?(?: (<[^>]+>))?(?:\s{2,}\S.*)?$")


def parse_help(command: str, text: str) -> Help:
    options: dict[str, Option] = {}
    current: Option | None = None
    subcommands: set[str] = set()
    section = None
    for line in text.splitlines():
        if re.match(r"^\S.*:$", line):
            section = line[:-1]
            current = None
            continue
        if section == "Commands":
            m = re.match(r"^\s+([a-z][a-z0-9-]*)\s", line)
            if m and m.group(1) != "help":
                subcommands.add(m.group(1))
            continue
        m = OPTION_LINE.match(line)
        if m:
            current = Option(flag=m.group(1), takes_value=bool(m.group(2) or m.group(3)), equals_only=bool(m.group(2)))
            options[current.flag] = current
        if current is None:
            continue
        env = re.search(r"\[env: ([A-Z0-9_]+)=", line)
        if env:
            current.env = env.group(1)
        default = re.search(r"\[default: ([^\]]*)\]", line)
        if default:
            current.default = default.group(1)
    usage = re.search(r"^Usage: (.*)$", text, re.M)
    assert usage, f"{command} --help has no Usage line"
    # Flags outside [...] on the first usage line are required.
    required = set(re.findall(r"(?<!\[)(--[a-z0-9-]+) <", usage.group(1)))
    return Help(command=command, options=options, required=required, subcommands=subcommands)


_helps: dict[str, Help] = {}


def help_of(command: str) -> Help:
    """`--help` of a binary, or of `binary subcommand`."""
    if command not in _helps:
        name, *sub = command.split()
        result = subprocess.run(
            [str(binary(name)), *sub, "--help"],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
        )
        assert result.returncode == 0, f"{command} --help failed: {result.stderr}"
        _helps[command] = parse_help(command, result.stdout)
        assert _helps[command].options, f"no options parsed from {command} --help"
    return _helps[command]


# ------------------------------------------------------------ invocations ----


@dataclasses.dataclass
class Invocation:
    """One place a deploy file runs a Warrant binary."""

    where: str
    binary: str
    args: list[str]
    env: dict[str, str]
    # Container ports this service exposes, and the ports its health checks,
    # probes and scrape annotations use: all must be the listen port.
    ports: set[int] = dataclasses.field(default_factory=set)
    probe_ports: set[int] = dataclasses.field(default_factory=set)
    # Mount target -> (kind, what): kind is "bind" (what = host path),
    # "volume" (a writable volume), or "files" (what = file names provided).
    mounts: dict[str, tuple[str, object]] = dataclasses.field(default_factory=dict)
    read_only_root: bool = False


def split_command(command) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(c) for c in command]


def compose_invocations(doc: dict) -> list[Invocation]:
    found = []
    for name, service in (doc.get("services") or {}).items():
        command = split_command(service.get("entrypoint")) + split_command(service.get("command"))
        if not command or Path(command[0]).name not in BINARIES:
            continue
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
        inv = Invocation(
            where=f"docker-compose.yml services.{name}",
            binary=Path(command[0]).name,
            args=command[1:],
            env={str(k): str(v) for k, v in environment.items()},
        )
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                inv.ports.add(int(port["target"]))
            else:
                inv.ports.add(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
        for port in service.get("expose") or []:
            inv.ports.add(int(str(port).split("/")[0]))
        test = (service.get("healthcheck") or {}).get("test") or []
        for url in re.findall(r"https?://[^\s\"']+", " ".join(map(str, test if isinstance(test, list) else [test]))):
            inv.probe_ports.add(urlsplit(url).port or 80)
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                source, target, read_only = volume.get("source"), volume["target"], volume.get("read_only", False)
            else:
                parts = str(volume).split(":")
                source, target = parts[0], parts[1]
                read_only = len(parts) > 2 and "ro" in parts[2].split(",")
            if source and (source.startswith(".") or source.startswith("/")):
                inv.mounts[target] = ("bind", REPO / source)
            elif not read_only:
                inv.mounts[target] = ("volume", source)
        found.append(inv)
    return found


def load_k8s_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def pod_template(doc: dict) -> dict | None:
    kind = doc.get("kind")
    if kind == "Pod":
        return doc
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    if kind in WORKLOAD_KINDS:
        return doc["spec"]["template"]
    return None


def k8s_invocations(docs: list[dict]) -> tuple[list[Invocation], list[str]]:
    """Invocations of Warrant binaries in workloads, and problems resolving
    them (a missing ConfigMap, an unknown named port...)."""
    problems = []
    by_kind_name = {(d.get("kind"), d.get("metadata", {}).get("name")): d for d in docs}
    found = []
    for doc in docs:
        template = pod_template(doc)
        if template is None:
            continue
        spec = template.get("spec", {})
        annotations = template.get("metadata", {}).get("annotations") or {}
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for claim in doc.get("spec", {}).get("volumeClaimTemplates") or []:
            volumes[claim["metadata"]["name"]] = {"persistentVolumeClaim": {}}
        for container in spec.get("containers") or []:
            command = split_command(container.get("command")) + split_command(container.get("args"))
            if not command or Path(command[0]).name not in BINARIES:
                continue
            where = f"{doc['kind']}/{doc['metadata']['name']} container {container['name']}"
            env = {}
            for source in container.get("envFrom") or []:
                ref = source.get("configMapRef") or source.get("secretRef")
                kind = "ConfigMap" if "configMapRef" in source else "Secret"
                target = by_kind_name.get((kind, ref["name"]))
                if target is None:
                    problems.append(f"{where}: envFrom {kind} {ref['name']} is not in deploy/kubernetes")
                    continue
                data = {**(target.get("data") or {}), **(target.get("stringData") or {})}
                env.update({source.get("prefix", "") + k: str(v) for k, v in data.items()})
            for item in container.get("env") or []:
                env[item["name"]] = str(item.get("value", "<valueFrom>"))
            inv = Invocation(where=where, binary=Path(command[0]).name, args=command[1:], env=env)
            named = {}
            for port in container.get("ports") or []:
                inv.ports.add(int(port["containerPort"]))
                if "name" in port:
                    named[port["name"]] = int(port["containerPort"])
            for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
                get = (container.get(probe_name) or {}).get("httpGet")
                if not get:
                    continue
                port = get["port"]
                if isinstance(port, str) and not port.isdigit():
                    if port not in named:
                        problems.append(f"{where}: {probe_name} names port {port!r}, which the container does not declare")
                        continue
                    port = named[port]
                inv.probe_ports.add(int(port))
            if "prometheus.io/port" in annotations:
                inv.probe_ports.add(int(annotations["prometheus.io/port"]))
            inv.read_only_root = bool((container.get("securityContext") or {}).get("readOnlyRootFilesystem"))
            for mount in container.get("volumeMounts") or []:
                volume = volumes.get(mount["name"])
                if volume is None:
                    problems.append(f"{where}: volumeMount {mount['name']} has no volume")
                    continue
                inv.mounts[mount["mountPath"]] = volume_contents(volume, by_kind_name, where, problems, mount)
            found.append(inv)
    return found, problems


def volume_contents(volume, by_kind_name, where, problems, mount) -> tuple[str, object]:
    """What a mounted volume provides: ("files", {name: (kind, name, key)})
    for ConfigMaps/Secrets, ("volume", name) for writable storage."""
    sources = []
    if "projected" in volume:
        sources = volume["projected"]["sources"]
    elif "configMap" in volume or "secret" in volume:
        sources = [volume]
    else:
        if mount.get("readOnly"):
            return ("files", {})
        return ("volume", mount["name"])
    files = {}
    for source in sources:
        kind = "ConfigMap" if "configMap" in source else "Secret"
        ref = source.get("configMap") or source.get("secret")
        name = ref.get("name") or ref.get("secretName")
        target = by_kind_name.get((kind, name))
        if target is None:
            problems.append(f"{where}: volume source {kind} {name} is not in deploy/kubernetes")
            continue
        data = {**(target.get("data") or {}), **(target.get("stringData") or {})}
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] not in data:
                problems.append(f"{where}: {kind} {name} has no key {item['key']!r}")
                continue
            files[item["path"]] = (kind, name, item["key"])
    return ("files", files)


def listen_of(inv: Invocation, help: Help) -> str | None:
    """The address the invocation listens on: --listen, its env var, or the default."""
    option = help.options.get("--listen")
    if option is None:
        return None
    value = flag_value(inv.args, "--listen")
    if value is None and option.env:
        value = inv.env.get(option.env)
    return value if value is not None else option.default


def flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def invocation_problems(inv: Invocation, help_for=help_of) -> list[str]:
    """Everything wrong with how `inv` runs its binary, judged by --help."""
    problems = []
    if inv.binary not in BINARIES:
        return [f"{inv.where}: {inv.binary} is not one of {BINARIES}"]
    args = list(inv.args)
    command = inv.binary
    if args and not args[0].startswith("-"):
        sub = args.pop(0)
        if sub not in help_for(inv.binary).subcommands:
            return [f"{inv.where}: {inv.binary} has no subcommand {sub!r}"]
        command = f"{inv.binary} {sub}"
    help = help_for(command)
    given: set[str] = set()
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--"):
            problems.append(f"{inv.where}: unexpected argument {arg!r} for {command}")
            continue
        flag = arg.split("=", 1)[0]
        option = help.options.get(flag)
        if option is None:
            close = difflib.get_close_matches(flag, list(help.options), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{inv.where}: {command} has no flag {flag}{hint}")
            continue
        given.add(flag)
        # `--ingress[=<INGRESS>]` takes its value only after "=".
        if option.takes_value and not option.equals_only and "=" not in arg:
            i += 1
    envs = help.envs
    for name in inv.env:
        if not name.startswith("WARRANT_"):
            continue
        if name not in envs:
            close = difflib.get_close_matches(name, list(envs), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{inv.where}: {command} --help lists no env var {name}{hint}")
        else:
            given.add(envs[name].flag)
    for flag in sorted(help.required - given):
        env = help.options[flag].env if flag in help.options else None
        problems.append(f"{inv.where}: {command} requires {flag} (or {env}), which is not set")

    listen = listen_of(inv, help)
    if listen is not None:
        host, port = host_port(listen)
        if host in ("127.0.0.1", "localhost", "::1"):
            problems.append(f"{inv.where}: listens on {listen}, unreachable from outside the container (set {help.options['--listen'].env})")
        if port not in inv.ports:
            problems.append(f"{inv.where}: listens on port {port} but exposes {sorted(inv.ports)}")
        for other in sorted((inv.ports | inv.probe_ports) - {port}):
            problems.append(f"{inv.where}: uses port {other} but the binary listens on {port}")
        if not inv.probe_ports:
            problems.append(f"{inv.where}: no health check or probe on port {port}")

    for name in READ_FILES:
        if name in inv.env:
            problems.extend(file_problems(inv, name, inv.env[name]))
    for name in WRITE_DIRS:
        if name in inv.env:
            problems.extend(write_dir_problems(inv, name, inv.env[name]))
    return problems


def mount_for(inv: Invocation, path: str) -> tuple[str, tuple[str, object]] | None:
    best = None
    for target, mount in inv.mounts.items():
        if path == target or path.startswith(target.rstrip("/") + "/"):
            if best is None or len(target) > len(best[0]):
                best = (target, mount)
    return best


def file_problems(inv: Invocation, name: str, path: str) -> list[str]:
    found = mount_for(inv, path)
    if found is None:
        return [f"{inv.where}: {name}={path} is not under any mounted volume"]
    target, (kind, what) = found
    relative = path[len(target.rstrip("/")) + 1 :]
    if kind == "bind":
        if not (Path(what) / relative).is_file():
            return [f"{inv.where}: {name}={path}, but {Path(what) / relative} does not exist"]
    elif kind == "files":
        if relative not in what:
            return [f"{inv.where}: {name}={path}, but the volume at {target} has only {sorted(what)}"]
    else:
        return [f"{inv.where}: {name}={path} is on a data volume, not a config mount"]
    return []


def write_dir_problems(inv: Invocation, name: str, path: str) -> list[str]:
    found = mount_for(inv, path)
    if found is None or found[1][0] != "volume":
        return [f"{inv.where}: {name}={path} is not on a writable volume (its data would be lost, or the root filesystem is read-only)"]
    return []


def url_problems(inv: Invocation, name: str, services: dict[str, int]) -> list[str]:
    """`inv.env[name]` (one URL, or a comma list of them: every projector
    shard's) must point at host:port of known services."""
    value = inv.env.get(name)
    if value is None:
        return [f"{inv.where}: {name} is not set"]
    problems = []
    for url in value.split(","):
        parts = urlsplit(url.strip())
        if parts.hostname not in services:
            problems.append(f"{inv.where}: {name}={url} names {parts.hostname!r}, not one of {sorted(services)}")
        elif parts.port != services[parts.hostname]:
            problems.append(f"{inv.where}: {name}={url} but {parts.hostname} serves on {services[parts.hostname]}")
    return problems


def k8s_pod_names(docs: list[dict], services: dict[str, int]) -> dict[str, int]:
    """`<pod>.<headless service>.<namespace>.svc` -> port, for every pod a
    StatefulSet runs under a headless Service that reaches it."""
    names = {}
    for doc in docs:
        if doc.get("kind") != "StatefulSet":
            continue
        service = doc["spec"].get("serviceName")
        if service not in services:
            continue
        namespace = doc["metadata"].get("namespace", "default")
        for ordinal in range(int(doc["spec"].get("replicas", 1))):
            names[f"{doc['metadata']['name']}-{ordinal}.{service}.{namespace}.svc"] = services[service]
    return names


def projector_shard_problems(docs: list[dict]) -> list[str]:
    """A sharded projector StatefulSet (WARRANT_PROJECTOR_PARTITIONS
    "$(POD_NAME)/N") must have N replicas, each pod its own name, and every
    intake must be given every shard's URL."""
    problems = []
    for doc in docs:
        if doc.get("kind") != "StatefulSet" or doc["metadata"]["name"] != "warrant-projector":
            continue
        container = doc["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container.get("env") or []}
        spec = env.get("WARRANT_PROJECTOR_PARTITIONS", {}).get("value", "all")
        if spec == "all":
            continue
        replicas = int(doc["spec"].get("replicas", 1))
        index, _, count = spec.partition("/")
        if index != "$(POD_NAME)" or env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
            problems.append(f"StatefulSet/warrant-projector: WARRANT_PROJECTOR_PARTITIONS={spec} must take the shard from the pod's name ($(POD_NAME) from metadata.name)")
        if count != str(replicas):
            problems.append(f"StatefulSet/warrant-projector: WARRANT_PROJECTOR_PARTITIONS={spec} names {count} shards but the StatefulSet runs {replicas} replicas")
        service = doc["spec"]["serviceName"]
        namespace = doc["metadata"].get("namespace", "default")
        shards = {f"{doc['metadata']['name']}-{i}.{service}.{namespace}.svc" for i in range(replicas)}
        invocations, _ = k8s_invocations(docs)
        for inv in invocations:
            if inv.binary != "warrant-intake":
                continue
            given = {urlsplit(url.strip()).hostname for url in inv.env.get("WARRANT_PROJECTOR_URL", "").split(",")}
            if given != shards:
                problems.append(f"{inv.where}: WARRANT_PROJECTOR_URL names {sorted(given)}, but the shards are {sorted(shards)}")
    return problems


def k8s_services(docs: list[dict]) -> tuple[dict[str, int], list[str]]:
    """Service name -> port for Services that reach a warrant container on
    the port that container listens on; problems for those that do not."""
    problems = []
    workloads = []
    for doc in docs:
        template = pod_template(doc)
        if template is not None:
            workloads.append((template.get("metadata", {}).get("labels") or {}, template["spec"]))
    reachable: dict[str, int] = {}
    for doc in docs:
        if doc.get("kind") != "Service":
            continue
        name = doc["metadata"]["name"]
        selector = doc["spec"].get("selector") or {}
        pods = [spec for labels, spec in workloads if selector and all(labels.get(k) == v for k, v in selector.items())]
        if not pods:
            problems.append(f"Service/{name}: selects no pod template")
            continue
        for port in doc["spec"].get("ports") or []:
            target = port.get("targetPort", port["port"])
            for spec in pods:
                for container in spec.get("containers") or []:
                    declared = {p.get("name"): int(p["containerPort"]) for p in container.get("ports") or []}
                    resolved = declared.get(target) if isinstance(target, str) else int(target)
                    if resolved is None or resolved not in declared.values():
                        problems.append(f"Service/{name}: targetPort {target!r} is not a port of container {container['name']}")
                    else:
                        reachable[name] = int(port["port"])
    return reachable, problems


# ------------------------------------------------------------------ topics ----


@dataclasses.dataclass
class TopicSpec:
    partitions: int | None = None
    replication: int | None = None
    configs: dict[str, str] = dataclasses.field(default_factory=dict)


def compose_topic_specs(doc: dict) -> dict[str, TopicSpec]:
    """What the compose `topics` service creates (kafka-topics.sh --create)
    and alters (kafka-configs.sh --add-config)."""
    service = doc["services"]["topics"]
    command = service.get("command") or []
    script = command if isinstance(command, str) else "\n".join(command)
    specs: dict[str, TopicSpec] = {}
    for line in script.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        if not tokens:
            continue
        tool = Path(tokens[0]).name
        if tool == "kafka-topics.sh" and "--create" in tokens:
            name = flag_value(tokens, "--topic")
            spec = specs.setdefault(name, TopicSpec())
            spec.partitions = int(flag_value(tokens, "--partitions"))
            spec.replication = int(flag_value(tokens, "--replication-factor"))
            for i, token in enumerate(tokens):
                if token == "--config":
                    key, value = tokens[i + 1].split("=", 1)
                    spec.configs[key] = value
        elif tool == "kafka-configs.sh" and "--alter" in tokens:
            name = flag_value(tokens, "--entity-name")
            for pair in (flag_value(tokens, "--add-config") or "").split(","):
                key, value = pair.split("=", 1)
                specs.setdefault(name, TopicSpec()).configs[key] = value
    return specs


def kafka_sh_topics() -> dict[str, TopicSpec]:
    """The topics deploy/kafka.sh creates for development, as it names them."""
    text = KAFKA_SH.read_text()
    names = dict(re.findall(r'^(\w+_TOPIC)="\$\{WARRANT_\w+:-([^}]+)\}"', text, re.M))
    numbers = dict(re.findall(r'^(\w+)="\$\{WARRANT_\w+:-(\d+)\}"', text, re.M))
    specs = {}
    for var, partitions, extra in re.findall(r'^\s+"\$(\w+_TOPIC) \$?(\w+)(.*)"\s*$', text, re.M):
        spec = TopicSpec(partitions=int(numbers.get(partitions, partitions)))
        spec.configs = dict(re.findall(r"--config (\S+?)=(\S+)", extra))
        specs[names[var]] = spec
    assert len(specs) == 6, f"could not read the six topics from deploy/kafka.sh (got {specs})"
    return specs


def topic_problems(specs: dict[str, TopicSpec], defaults: dict[str, str], dev: dict[str, TopicSpec]) -> list[str]:
    problems = []
    wanted = set(defaults.values())
    created = {name for name, spec in specs.items() if spec.partitions is not None}
    for missing in sorted(wanted - created):
        problems.append(f"topic {missing} (a --help default) is not created")
    for extra in sorted(set(specs) - wanted):
        problems.append(f"topic {extra} is created or altered but no binary uses it (defaults: {sorted(wanted)})")
    for name, spec in specs.items():
        if name in dev and name in created and spec.partitions != dev[name].partitions:
            problems.append(f"topic {name}: {spec.partitions} partitions, deploy/kafka.sh has {dev[name].partitions}")
    log = specs.get(defaults["--log-topic"])
    if log and log.configs.get("retention.ms") != "-1":
        problems.append(f"topic {defaults['--log-topic']} must keep everything (retention.ms=-1), has {log.configs}")
    if log and log.configs.get("cleanup.policy", "delete") != "delete":
        problems.append(f"topic {defaults['--log-topic']} must never be compacted")
    for flag in ("--rulesets-topic", "--principals-topic"):
        keyed = specs.get(defaults[flag])
        if keyed and keyed.configs.get("cleanup.policy") != "compact":
            problems.append(f"topic {defaults[flag]} must be compacted")
    return problems


def topic_defaults() -> dict[str, str]:
    intake = help_of("warrant-intake")
    defaults = {flag: intake.default(flag) for flag in TOPIC_FLAGS}
    for other in ("warrant-projector", "warrant-replay", "warrant-notifier"):
        for flag in TOPIC_FLAGS:
            assert help_of(other).default(flag) == defaults[flag], f"{other} {flag} default differs from intake's"
    return defaults


# -------------------------------------------------------------- Dockerfile ----


def dockerfile_problems(text: str, toolchain: str) -> list[str]:
    lines = []
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            lines.append(stripped)
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    if len(stages) < 2:
        return ["the Dockerfile is not multi-stage (builder + runtime)"]
    problems = []
    builder, final = stages[0], stages[-1]
    base = builder[0].split()[1]
    if not re.fullmatch(rf"rust:{re.escape(toolchain)}(-[a-z]+)?", base):
        problems.append(f"builder image {base} is not rust:{toolchain} (rust-toolchain.toml)")
    builds = [line for stage in stages[:-1] for line in stage if "cargo build" in line]
    if not builds:
        problems.append("no `cargo build` in a builder stage")
    for line in builds:
        for needed in ("--release", "--locked", *(f"-p {b}" for b in BINARIES)):
            if needed not in line:
                problems.append(f"`cargo build` lacks {needed}")
    if "rust" in final[0].split()[1]:
        problems.append("the runtime stage is based on the Rust toolchain image")
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    if not users:
        problems.append("the runtime stage has no USER: it would run as root")
    elif users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"the runtime stage runs as {users[-1]}")
    elif not users[-1].split(":")[0].isdigit():
        problems.append(f"USER {users[-1]} is not numeric: Kubernetes' runAsNonRoot cannot verify a name")
    copies = [line for line in final if line.upper().startswith("COPY ") and "--from=" in line]
    for name in BINARIES:
        if not any(name in line and line.rstrip().endswith("/usr/local/bin/") for line in copies):
            problems.append(f"the runtime stage does not copy {name} to /usr/local/bin/")
    if not any(re.match(r"COPY\s+deploy/examples/?\s+/etc/warrant/?$", line) for line in final):
        problems.append("the runtime stage does not copy deploy/examples/ to /etc/warrant/")
    if any(line.upper().startswith("ENTRYPOINT") for line in final):
        problems.append("the runtime stage has an ENTRYPOINT (compose and k8s pass the command)")
    return problems


def toolchain_channel() -> str:
    text = (REPO / "rust-toolchain.toml").read_text()
    m = re.search(r'^channel\s*=\s*"([^"]+)"', text, re.M)
    assert m, "rust-toolchain.toml has no channel"
    return m.group(1)


# ------------------------------------------------------------------- fixtures ----


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def k8s() -> list[dict]:
    """The Kubernetes objects (kustomization.yaml is not one)."""
    return [doc for _, doc in load_k8s_docs() if doc.get("kind") != "Kustomization"]


# ---------------------------------------------------------------------- (a) ----


def test_every_yaml_file_parses_and_the_kustomization_lists_them_all(compose, k8s):
    assert set(compose["services"]) >= {"kafka", "topics", "projector", "intake"}
    files = sorted(K8S.glob("*.y*ml"))
    assert files, "deploy/kubernetes has no YAML"
    for path, doc in load_k8s_docs():
        assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
        assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}: a document has no apiVersion/kind"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in k8s}
    for wanted in [
        ("Namespace", "warrant"),
        ("ConfigMap", "warrant-ruleset"),
        ("Secret", "warrant-principals"),
        ("Deployment", "warrant-intake"),
        ("Service", "warrant-intake"),
        ("StatefulSet", "warrant-projector"),
        ("Service", "warrant-projector"),
        ("Service", "warrant-projector-headless"),
    ]:
        assert wanted in kinds, f"deploy/kubernetes has no {wanted[0]} {wanted[1]}"

    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in files} - {"kustomization.yaml"}
    assert listed == on_disk, f"kustomization.yaml resources {sorted(listed)} != files {sorted(on_disk)}"

    # Where kubectl is installed, let kustomize itself build the set.
    kubectl = shutil.which("kubectl")
    if kubectl:
        built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
        assert built.returncode == 0, built.stderr
        assert len([d for d in yaml.safe_load_all(built.stdout) if d]) == len(kinds)


def test_the_secret_and_configmap_carry_the_examples(k8s):
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in k8s}
    ruleset = by_name[("ConfigMap", "warrant-ruleset")]["data"]["ruleset.yaml"]
    # Byte for byte: the ruleset's digest is the SHA-256 of its bytes.
    assert ruleset == (EXAMPLES / "ruleset.yaml").read_text()
    principals = by_name[("Secret", "warrant-principals")]["stringData"]["principals.yaml"]
    assert yaml.safe_load(principals) == yaml.safe_load((EXAMPLES / "principals.yaml").read_text())


# ---------------------------------------------------------------------- (b) ----


def all_invocations(compose, k8s) -> tuple[list[Invocation], list[str]]:
    invocations = compose_invocations(compose)
    from_k8s, problems = k8s_invocations(k8s)
    return invocations + from_k8s, problems


def test_every_flag_and_variable_passed_to_a_binary_is_in_its_help(compose, k8s):
    invocations, problems = all_invocations(compose, k8s)
    # The checks below are vacuous unless the services are actually found.
    found = {(inv.where.split()[0], inv.binary) for inv in invocations}
    for wanted in [
        ("docker-compose.yml", "warrant-intake"),
        ("docker-compose.yml", "warrant-projector"),
        ("Deployment/warrant-intake", "warrant-intake"),
        ("StatefulSet/warrant-projector", "warrant-projector"),
    ]:
        assert wanted in found, f"no {wanted[1]} found in {wanted[0]}: {sorted(found)}"
    for inv in invocations:
        problems.extend(invocation_problems(inv))
    assert problems == []


def test_the_checker_catches_misspelt_variables_and_flags(compose, k8s):
    intake = next(i for i in compose_invocations(compose) if i.binary == "warrant-intake")
    assert invocation_problems(intake) == []

    misspelt = copy.deepcopy(intake)
    misspelt.env["WARRANT_RULSET"] = misspelt.env.pop("WARRANT_RULESET")
    problems = invocation_problems(misspelt)
    assert any("no env var WARRANT_RULSET" in p and "WARRANT_RULESET" in p for p in problems), problems
    # ...and the ruleset is then missing altogether.
    assert any("requires --ruleset" in p for p in problems), problems

    flagged = copy.deepcopy(intake)
    flagged.args = ["--brokres", "kafka:9092"]
    assert any("has no flag --brokres (did you mean --brokers?)" in p for p in invocation_problems(flagged))

    # A projector variable given to intake is not intake's.
    wrong_binary = copy.deepcopy(intake)
    wrong_binary.env["WARRANT_PROJECTOR_DATA"] = "/var/lib/warrant/projector"
    assert any("lists no env var WARRANT_PROJECTOR_DATA" in p for p in invocation_problems(wrong_binary))

    # The same checks hold for the Kubernetes manifests.
    broken = copy.deepcopy(k8s)
    deployment = next(d for d in broken if d["kind"] == "Deployment")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "WARRANT_PRINCIPALS")["name"] = "WARRANT_PRINCIPAL"
    invocations, _ = k8s_invocations(broken)
    problems = [p for inv in invocations for p in invocation_problems(inv)]
    assert any("WARRANT_PRINCIPAL " in p + " " and "Deployment/warrant-intake" in p for p in problems), problems

    # A ConfigMap referenced by envFrom must exist.
    broken = copy.deepcopy(k8s)
    broken = [d for d in broken if not (d["kind"] == "ConfigMap" and d["metadata"]["name"] == "warrant-kafka")]
    _, problems = k8s_invocations(broken)
    assert any("envFrom ConfigMap warrant-kafka" in p for p in problems), problems


# ---------------------------------------------------------------------- (c) ----


def test_ports_and_addresses_agree_with_the_binaries(compose, k8s):
    invocations, _ = all_invocations(compose, k8s)
    for inv in invocations:
        help = help_of(inv.binary)
        listen = listen_of(inv, help)
        if listen is None:
            continue
        # The documented ports (8080 intake, 8081 projector): clients,
        # probes and docs can rely on them.
        assert host_port(listen)[1] == host_port(help.default("--listen"))[1], f"{inv.where} moved off the default port"

    compose_ports = {}
    for inv in compose_invocations(compose):
        listen = listen_of(inv, help_of(inv.binary))
        if listen:
            compose_ports[inv.where.split(".")[-1]] = host_port(listen)[1]
    problems = []
    for inv in compose_invocations(compose):
        if inv.binary == "warrant-intake":
            problems += url_problems(inv, "WARRANT_PROJECTOR_URL", {"projector": compose_ports["projector"]})
        if inv.binary == "warrant-replay":
            url = flag_value(inv.args, "--verify")
            assert url and urlsplit(url).hostname == "projector" and urlsplit(url).port == compose_ports["projector"]

    services, service_problems = k8s_services(k8s)
    problems += service_problems
    k8s_invs, _ = k8s_invocations(k8s)
    projector_services = {name: port for name, port in services.items() if name.startswith("warrant-projector")}
    projector_services |= k8s_pod_names(k8s, projector_services)
    for inv in k8s_invs:
        if inv.binary == "warrant-intake":
            problems += url_problems(inv, "WARRANT_PROJECTOR_URL", projector_services)
    assert problems == []

    # The checker notices a port that disagrees, a loopback listener and a URL to nowhere.
    intake = next(i for i in compose_invocations(compose) if i.binary == "warrant-intake")
    moved = copy.deepcopy(intake)
    moved.env["WARRANT_INTAKE_LISTEN"] = "0.0.0.0:9090"
    assert any("listens on port 9090 but exposes [8080]" in p for p in invocation_problems(moved))
    loopback = copy.deepcopy(intake)
    del loopback.env["WARRANT_INTAKE_LISTEN"]
    assert any("unreachable from outside the container" in p for p in invocation_problems(loopback))
    lost = copy.deepcopy(intake)
    lost.env["WARRANT_PROJECTOR_URL"] = "http://projector:8080"
    assert url_problems(lost, "WARRANT_PROJECTOR_URL", {"projector": 8081}) != []
    broken = copy.deepcopy(k8s)
    service = next(d for d in broken if d["kind"] == "Service" and d["metadata"]["name"] == "warrant-intake")
    service["spec"]["ports"][0]["targetPort"] = "metrics"
    assert any("Service/warrant-intake: targetPort 'metrics'" in p for p in k8s_services(broken)[1])
    broken = copy.deepcopy(k8s)
    sts = next(d for d in broken if d["kind"] == "StatefulSet")
    sts["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] = "9102"
    invocations, _ = k8s_invocations(broken)
    assert any("uses port 9102" in p for inv in invocations for p in invocation_problems(inv))


def test_the_projector_shards_match_the_statefulset_and_intake_knows_them_all(k8s):
    assert projector_shard_problems(k8s) == []
    sts = next(d for d in k8s if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "warrant-projector")
    assert int(sts["spec"]["replicas"]) > 1, "the manifests show the projector sharded"

    # And notices a shard count that is not the replicas, or a shard intake is not given.
    broken = copy.deepcopy(k8s)
    sts = next(d for d in broken if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "warrant-projector")
    sts["spec"]["replicas"] = 3
    problems = projector_shard_problems(broken)
    assert any("names 2 shards but the StatefulSet runs 3 replicas" in p for p in problems), problems
    assert any("warrant-projector-2.warrant-projector-headless.warrant.svc" in p for p in problems), problems


def test_files_and_data_are_on_the_right_volumes(compose, k8s):
    # Covered by invocation_problems for the real files; here the checker is
    # shown to catch a projector whose view would be on a read-only root.
    broken = copy.deepcopy(k8s)
    sts = next(d for d in broken if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "warrant-projector")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    next(e for e in container["env"] if e["name"] == "WARRANT_PROJECTOR_DATA")["value"] = "/data/projector"
    invocations, _ = k8s_invocations(broken)
    assert any("WARRANT_PROJECTOR_DATA=/data/projector is not on a writable volume" in p for inv in invocations for p in invocation_problems(inv))

    intake = next(i for i in compose_invocations(compose) if i.binary == "warrant-intake")
    missing = copy.deepcopy(intake)
    missing.env["WARRANT_RULESET"] = "/etc/warrant/rules.yaml"
    assert any("rules.yaml does not exist" in p for p in invocation_problems(missing))

    broken = copy.deepcopy(k8s)
    deployment = next(d for d in broken if d["kind"] == "Deployment")
    sources = deployment["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
    sources[:] = [s for s in sources if "secret" not in s]
    invocations, _ = k8s_invocations(broken)
    assert any("WARRANT_PRINCIPALS=/etc/warrant/principals.yaml, but the volume" in p for inv in invocations for p in invocation_problems(inv))


def test_compose_creates_the_topics_the_binaries_use(compose):
    defaults = topic_defaults()
    dev = kafka_sh_topics()
    assert set(dev) == set(defaults.values()), "deploy/kafka.sh creates other topics than the binaries' defaults"
    specs = compose_topic_specs(compose)
    assert topic_problems(specs, defaults, dev) == []
    assert all(spec.replication == 1 for spec in specs.values())

    # The checker catches a misspelt topic, a lost retention and a missing compaction.
    broken = copy.deepcopy(compose)
    command = broken["services"]["topics"]["command"]
    broken["services"]["topics"]["command"] = [command[0].replace("--topic warrant.dead-letter", "--topic warrant.deadletter")]
    problems = topic_problems(compose_topic_specs(broken), defaults, dev)
    assert any("warrant.dead-letter (a --help default) is not created" in p for p in problems), problems
    assert any("warrant.deadletter is created or altered but no binary uses it" in p for p in problems), problems
    broken = copy.deepcopy(specs)
    broken["warrant.log"].configs.pop("retention.ms")
    broken["warrant.rulesets"].configs.pop("cleanup.policy")
    problems = topic_problems(broken, defaults, dev)
    assert any("retention.ms=-1" in p for p in problems) and any("must be compacted" in p for p in problems), problems


def test_kafka_acls_let_only_intake_write_the_log():
    script = K8S / "kafka-acls.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = clean_env()
    env["DRY_RUN"] = "1"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30, check=True)
    grants: dict[tuple[str, str], dict[str, set[str]]] = {}
    for line in result.stdout.splitlines():
        tokens = shlex.split(line)
        assert "--add" in tokens and "--deny-principal" not in tokens, line
        principal = flag_value(tokens, "--allow-principal")
        resource = ("topic", flag_value(tokens, "--topic")) if "--topic" in tokens else ("group", flag_value(tokens, "--group"))
        operations = {tokens[i + 1] for i, t in enumerate(tokens) if t == "--operation"}
        grants.setdefault(resource, {}).setdefault(principal, set()).update(operations)
    defaults = topic_defaults()

    def writers(topic):
        return {p for p, ops in grants.get(("topic", topic), {}).items() if ops & {"Write", "All"}}

    for flag in ("--log-topic", "--rulesets-topic", "--principals-topic", "--dead-letter-topic"):
        assert writers(defaults[flag]) == {"User:warrant-intake"}, f"{defaults[flag]} writers: {writers(defaults[flag])}"
    log = grants[("topic", defaults["--log-topic"])]
    assert log["User:warrant-projector"] == {"Read", "Describe"}
    assert writers(defaults["--proposals-topic"]) and "User:warrant-intake" not in writers(defaults["--proposals-topic"])
    assert writers(defaults["--signals-topic"]) and "User:warrant-intake" not in writers(defaults["--signals-topic"])
    # Intake's ingress group may be joined; nobody else gets more than Describe on a group.
    ingress_group = help_of("warrant-intake").default("--ingress-group")
    for (kind, name), principals in grants.items():
        if kind == "topic":
            assert name in defaults.values(), f"ACL on unknown topic {name}"
        else:
            for principal, ops in principals.items():
                if ops - {"Describe"}:
                    assert name in (ingress_group, "warrant-operator"), f"{principal} may {ops} group {name}"


# ---------------------------------------------------------------------- (d) ----


def intake_loads(ruleset: Path, principals: Path) -> tuple[dict | None, str]:
    """`warrant-intake --check-config`: the real loaders, no Kafka. Returns
    the JSON it printed when the files passed (None otherwise) and stderr."""
    result = subprocess.run(
        [
            str(binary("warrant-intake")),
            "--check-config",
            "--ruleset", str(ruleset),
            "--principals", str(principals),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    if result.returncode != 0:
        return None, result.stderr
    return json.loads(result.stdout), result.stderr


def test_the_deployed_configuration_loads_in_intake(tmp_path, k8s):
    """The files compose mounts and the ConfigMap/Secret Kubernetes mounts,
    loaded by the real binary."""
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in k8s}
    deployed = tmp_path / "k8s"
    deployed.mkdir()
    (deployed / "ruleset.yaml").write_text(by_name[("ConfigMap", "warrant-ruleset")]["data"]["ruleset.yaml"])
    (deployed / "principals.yaml").write_text(by_name[("Secret", "warrant-principals")]["stringData"]["principals.yaml"])
    for directory in (EXAMPLES, deployed):
        event, output = intake_loads(directory / "ruleset.yaml", directory / "principals.yaml")
        assert event is not None, f"intake did not load {directory}:\n{output}"
        assert event["ruleset_digest"] == hashlib.sha256((directory / "ruleset.yaml").read_bytes()).hexdigest()
        assert event["rules"] >= 1 and event["tokens"] >= 1 and event["reviewers"] >= 1, event
        assert event["unheld_roles"] == [], event

    # The probe fails for the right reason on a ruleset without rules.
    bad = tmp_path / "bad-ruleset.yaml"
    bad.write_text("version: x\nrules: []\n")
    event, output = intake_loads(bad, EXAMPLES / "principals.yaml")
    assert event is None and "bad-ruleset.yaml" in output, output


def test_the_dockerfile_builds_the_three_binaries_and_runs_as_non_root():
    assert dockerfile_problems(DOCKERFILE.read_text(), toolchain_channel()) == []
    compose = yaml.safe_load(COMPOSE.read_text())
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["build"]["dockerfile"] == "deploy/Dockerfile" and service["build"]["context"] == "."

    good = DOCKERFILE.read_text()
    assert any("no USER" in p for p in dockerfile_problems(re.sub(r"(?m)^USER .*$", "", good), toolchain_channel()))
    assert any("runs as root" in p for p in dockerfile_problems(re.sub(r"(?m)^USER .*$", "USER root", good), toolchain_channel()))
    assert any("does not copy warrant-replay" in p for p in dockerfile_problems(good.replace("/out/warrant-replay /usr", "/usr"), toolchain_channel()))
    assert any("is not rust:1.94.0" in p for p in dockerfile_problems(good, "1.94.0"))


# ---------------------------------------------------------------------- docs ----


def doc_commands(text: str) -> list[tuple[str, list[str]]]:
    """(binary, args) for every Warrant command line in code blocks and
    inline code of a Markdown text."""
    snippets = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S):
        snippets.extend(block.replace("\\\n", " ").splitlines())
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    snippets.extend(s.replace("\n", " ") for s in re.findall(r"`([^`]+)`", prose))
    commands = []
    for snippet in snippets:
        try:
            tokens = shlex.split(snippet, comments=True)
        except ValueError:
            continue
        for i, token in enumerate(tokens):
            if token in BINARIES or any(token.endswith("/bin/" + b) for b in BINARIES):
                args = []
                for arg in tokens[i + 1 :]:
                    if arg in ("|", "||", "&&", ";", ">", ">>") or arg.startswith(">"):
                        break
                    args.append(arg)
                commands.append((Path(token).name, args))
    return commands


def doc_problems(text: str) -> list[str]:
    problems = []
    commands = doc_commands(text)
    for name, args in commands:
        inv = Invocation(where=f"docs: {name} {' '.join(args)}", binary=name, args=args, env={})
        for problem in invocation_problems(inv):
            # Commands in docs need not be complete (required flags may come
            # from the environment) and do not listen anywhere.
            if "requires --" not in problem and "listens on" not in problem and "no health check" not in problem and "unreachable" not in problem:
                problems.append(problem)
    all_flags = {flag for b in BINARIES for flag in help_of(b).options}
    all_flags |= {flag for sub in help_of("warrant-replay").subcommands for flag in help_of(f"warrant-replay {sub}").options}
    # The chaos runner (tests/chaos/chaos.py) is documented there too: its
    # flags and the broker variables it reads are real, though no binary's.
    chaos = "\n".join(path.read_text() for path in sorted(CHAOS.glob("*.py")))
    all_flags |= set(re.findall(r'add_argument\(\s*"(--[a-z0-9-]+)"', chaos))
    for flag in re.findall(r"`(--[a-z0-9-]+)(?:[= ][^`]*)?`", text):
        if flag not in all_flags:
            problems.append(f"docs: `{flag}` is not a flag of any Warrant binary")
    known_envs = {env for b in BINARIES for env in help_of(b).envs} | set(re.findall(r"WARRANT_[A-Z0-9_]*[A-Z0-9]", KAFKA_SH.read_text()))
    known_envs |= set(re.findall(r'environ(?:\.get\(|\[)"(WARRANT_[A-Z0-9_]*[A-Z0-9])"', chaos))
    for env in sorted(set(re.findall(r"WARRANT_[A-Z0-9_]*[A-Z0-9]", text)) - known_envs):
        problems.append(f"docs: {env} is not a variable of any Warrant binary or deploy/kafka.sh")
    metrics = registered_metrics()
    for metric in sorted(set(re.findall(r"\b(warrant_(?:intake|projector|notifier)_[a-z0-9_]+)", text))):
        base = re.sub(r"_(total|count|sum|bucket)$", "", metric)
        if metric not in metrics and base not in metrics:
            problems.append(f"docs: metric {metric} is not registered in crates/*/src/metrics.rs")
    return problems


def registered_metrics() -> set[str]:
    names = set()
    for crate in ("warrant-intake", "warrant-projector", "warrant-notifier"):
        text = (REPO / "crates" / crate / "src" / "metrics.rs").read_text()
        prefix = re.search(r'Registry::with_prefix\("([a-z_]+)"\)', text)
        assert prefix, f"{crate}: no Registry::with_prefix in metrics.rs"
        for name in re.findall(r'register\(\s*"([a-z0-9_]+)"', text):
            names.add(f"{prefix.group(1)}_{name}")
    assert len(names) > 10, names
    return names


def test_the_operations_doc_names_only_real_flags_variables_and_metrics():
    text = OPERATIONS.read_text()
    commands = doc_commands(text)
    assert {name for name, _ in commands} == set(BINARIES), commands
    assert doc_problems(text) == []

    # And notices when one is not.
    broken = text + "\n```sh\nwarrant-replay --verfy http://x:8081\n```\n`--sled-cache-gb`, WARRANT_PROJECTOR_LSTEN, `warrant_projector_fold_lag_secs`\n"
    problems = doc_problems(broken)
    for expected in ("no flag --verfy", "`--sled-cache-gb`", "WARRANT_PROJECTOR_LSTEN", "warrant_projector_fold_lag_secs"):
        assert any(expected in p for p in problems), (expected, problems)


def test_the_notifier_doc_names_only_real_flags_variables_and_metrics():
    text = (REPO / "docs" / "notifier.md").read_text()
    assert "warrant-notifier" in {name for name, _ in doc_commands(text)}
    assert doc_problems(text) == []
