#!/usr/bin/env python3
"""Checks the container files against the repository, as scripts/check-docker.sh runs it:

    check-docker-files.py docker-compose.yml Dockerfile.postgres Dockerfile.proxy

- every COPY/ADD source (other than copies from a stage) exists in the build
  context and is not left out by .dockerignore;
- every repository script a RUN line calls (`./x`, `scripts/...`, `docker/...`)
  exists, is executable and was copied into the stage before that RUN;
- `COPY --from=` names an earlier stage (or an image);
- docker-compose.yml is valid YAML, its build contexts and Dockerfiles exist,
  its bind-mounted files exist, and depends_on and named volumes refer to
  services and volumes it declares.

A Dockerfile that docker-compose.yml does not build is checked with the
repository root as its context. Prints nothing when all is well; otherwise
one line per problem on stderr, and exits with status 1.
"""

import glob
import json
import os
import re
import sys

import yaml

INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

errors = []


def error(where, message):
    errors.append(f"{where}: {message}")


# --- .dockerignore -----------------------------------------------------------

def pattern_regex(pattern):
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out += re.escape(c)
            else:
                cls = pattern[i + 1:j]
                out += "[" + ("^" + cls[1:] if cls.startswith("^") else cls) + "]"
                i = j
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def load_dockerignore(context):
    rules = []
    path = os.path.join(context, ".dockerignore")
    if not os.path.exists(path):
        return rules
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:].strip()
            line = os.path.normpath(line).lstrip("/")
            if line in ("", "."):
                continue
            rules.append((negate, pattern_regex(line)))
    return rules


def ignored(rules, relpath):
    """Whether .dockerignore leaves relpath (or a directory above it) out."""
    relpath = os.path.normpath(relpath)
    if relpath == ".":
        return False
    parts = relpath.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


# --- Dockerfiles -------------------------------------------------------------

def dockerfile_instructions(path):
    """(line number, KEYWORD, arguments) with continuation lines joined."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out, buf, start = [], "", 0
    for n, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, args = buf.partition(" ")
        out.append((start, keyword.upper(), args.strip()))
        buf = ""
    if buf:
        error(f"{path}:{start}", "the file ends inside a continued instruction")
    return out


def split_flags(args):
    """Leading --flag[=value] options of COPY/ADD, then the remaining words."""
    flags = {}
    words = args.split()
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    rest = " ".join(words)
    if rest.startswith("["):
        try:
            words = json.loads(rest)
        except json.JSONDecodeError:
            return flags, None
    return flags, words


def script_tokens(command):
    for token in re.split(r"[\s;&|()<>`\"'=]+", command):
        if "$" in token or "*" in token:
            continue
        if token.startswith("./") or token.startswith("scripts/") or token.startswith("docker/"):
            yield os.path.normpath(token)


def check_dockerfile(path, context):
    rules = load_dockerignore(context)
    stages = []          # stage names, in order
    copied = []          # context sources copied into the current stage so far
    seen_from = False
    for line, keyword, args in dockerfile_instructions(path):
        where = f"{path}:{line}"
        if keyword not in INSTRUCTIONS:
            error(where, f"unknown instruction {keyword!r}")
            continue
        if keyword == "FROM":
            seen_from = True
            words = args.split()
            words = [w for w in words if not w.startswith("--")]
            stages.append(words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages)))
            copied = []
        elif keyword in ("COPY", "ADD"):
            if not seen_from:
                error(where, f"{keyword} before the first FROM")
            flags, words = split_flags(args)
            if words is None:
                error(where, f"{keyword}: malformed JSON arguments")
                continue
            if len(words) < 2:
                error(where, f"{keyword} needs a source and a destination")
                continue
            if "from" in flags:
                src = flags["from"]
                if src not in stages[:-1] and not re.search(r"[/:.]", src):
                    error(where, f"COPY --from={src}: no earlier stage of that name")
                continue
            for src in words[:-1]:
                if keyword == "ADD" and re.match(r"^(https?|git)://|^git@", src):
                    continue
                rel = os.path.normpath(src.lstrip("/"))
                if rel == ".." or rel.startswith("../"):
                    error(where, f"{keyword} source {src} is outside the build context {context}")
                    continue
                matches = glob.glob(os.path.join(context, rel))
                if not matches:
                    error(where, f"{keyword} source {src} does not exist in the build context {context}")
                    continue
                for m in matches:
                    mrel = os.path.relpath(m, context)
                    if ignored(rules, mrel):
                        error(where, f"{keyword} source {mrel} is excluded by {context}/.dockerignore")
                copied.append(rel)
        elif keyword == "RUN":
            command = " ".join(w for w in args.split() if not w.startswith("--mount="))
            for rel in script_tokens(command):
                full = os.path.join(context, rel)
                if not os.path.isfile(full):
                    error(where, f"RUN calls {rel}, which is not a file in the build context {context}")
                    continue
                if not os.access(full, os.X_OK):
                    error(where, f"RUN calls {rel}, which is not executable (chmod +x {full})")
                if ignored(rules, rel):
                    error(where, f"RUN calls {rel}, which is excluded by {context}/.dockerignore")
                if not any(c == "." or rel == c or rel.startswith(c + "/") for c in copied):
                    error(where, f"RUN calls {rel} before any COPY brings it into the stage")
    if not stages:
        error(path, "no FROM instruction")


# --- docker-compose.yml ------------------------------------------------------

def check_compose(path):
    """Checks the compose file; returns {dockerfile path: [contexts]}."""
    built = {}
    base = os.path.dirname(path) or "."
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        error(path, "does not exist")
        return built
    except yaml.YAMLError as e:
        error(path, f"invalid YAML: {e}")
        return built
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict) or not doc["services"]:
        error(path, "needs a non-empty `services` mapping")
        return built
    services = doc["services"]
    volumes = doc.get("volumes") or {}
    for name, svc in services.items():
        where = f"{path}: service {name}"
        if not isinstance(svc, dict):
            error(where, "is not a mapping")
            continue
        build = svc.get("build")
        if build is None and "image" not in svc:
            error(where, "has neither build nor image")
        if build is not None:
            if isinstance(build, str):
                build = {"context": build}
            if not isinstance(build, dict):
                error(where, "build is neither a path nor a mapping")
            elif "dockerfile_inline" not in build:
                context = os.path.normpath(os.path.join(base, str(build.get("context", "."))))
                dockerfile = os.path.normpath(os.path.join(context, str(build.get("dockerfile", "Dockerfile"))))
                if not os.path.isdir(context):
                    error(where, f"build context {context} is not a directory")
                elif not os.path.isfile(dockerfile):
                    error(where, f"Dockerfile {dockerfile} does not exist")
                else:
                    built.setdefault(dockerfile, []).append(context)
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {} for d in deps}
        if not isinstance(deps, dict):
            error(where, "depends_on is neither a list nor a mapping")
            deps = {}
        for dep, spec in deps.items():
            if dep not in services:
                error(where, f"depends_on names an unknown service {dep!r}")
            cond = (spec or {}).get("condition", "service_started") if isinstance(spec, dict) else None
            if cond not in DEPENDS_ON_CONDITIONS:
                error(where, f"depends_on {dep}: unknown condition {cond!r}")
        for vol in svc.get("volumes") or []:
            if isinstance(vol, str):
                source = vol.split(":")[0] if ":" in vol else None
                kind = "bind" if source and source.startswith((".", "/", "~")) else "volume"
            elif isinstance(vol, dict):
                source, kind = vol.get("source"), vol.get("type", "volume")
            else:
                error(where, f"volume {vol!r} is neither a string nor a mapping")
                continue
            if not source or "$" in str(source):
                continue
            if kind == "bind":
                full = os.path.normpath(os.path.join(base, os.path.expanduser(source)))
                if not os.path.exists(full):
                    error(where, f"bind mount source {source} does not exist")
            elif kind == "volume" and source not in volumes:
                error(where, f"named volume {source!r} is not declared under top-level volumes")
    return built


def main(argv):
    if len(argv) < 2:
        print("usage: check-docker-files.py docker-compose.yml [Dockerfile...]", file=sys.stderr)
        return 2
    compose, dockerfiles = argv[1], argv[2:]
    built = check_compose(compose)
    for df in sorted(set(os.path.normpath(d) for d in dockerfiles) | set(built)):
        if not os.path.isfile(df):
            error(df, "does not exist")
            continue
        for context in sorted(set(built.get(df, ["."]))):
            check_dockerfile(df, context)
    for e in errors:
        print(f"check-docker: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
