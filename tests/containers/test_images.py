"""What is inside the images: the project and its packages, run as any user with no network; nothing the steps don't
need (tests, runs, caches, a compiler, the build's index settings)."""
import subprocess

import pytest

from pipeline import containers


def run_in(image: str, script: str, user: str = "1000:1000") -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "run", "--rm", "--network", "none", "-u", user, "-e", "HOME=/tmp", image,
                           "sh", "-c", script], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_the_image_holds_the_project_and_nothing_the_steps_dont_need(images, kind):
    image = images[kind]
    done = run_in(image, "ls -A /app; echo ---; python --version; command -v python3; echo ---; "
                         "for p in /app/tests /app/runs /app/.venv /app/benchmarks /app/.git /root/.cache /tmp/.cache "
                         "/etc/pip.conf /run/secrets/ca.crt /var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease; "
                         "do [ -e $p ] && echo present $p; done; command -v g++ gcc cc || true; "
                         "ls /var/cache/apt/archives/*.deb 2>/dev/null | head -3; "
                         "pip list --format=freeze 2>/dev/null | grep -iE '^(pytest|jax|jaxlib|gcp-storage-emulator)==' || true")
    assert done.returncode == 0, done.stderr[-2000:]
    app, version, rest = done.stdout.split("---\n")
    assert set(app.split()) == {"components", "pipeline", "setup.py", "requirements.lock", "image_lock.py", "image.lock"}
    assert version.startswith("Python 3.11.") and "/opt/venv/bin/python3" in version
    assert rest.strip() == "", rest  # no tests, runs, caches, compiler, apt lists or .debs, pip settings or test packages


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_the_image_is_labelled_with_what_it_was_built_from(images, kind):
    labels = containers.image_labels(images[kind])
    assert labels[containers.LABEL_LOCK] == containers.lock_digest()
    assert labels[containers.LABEL_SOURCE] == containers.source_digest()
    assert labels[containers.LABEL_BASE]


def test_every_step_cli_starts_in_its_image_as_a_plain_user_with_no_network(images):
    steps = {"cpu": ["ingest", "download", "validate", "convert", "filter", "push", "predict", "faces", "annotate",
                     "serve"],
             "gpu": ["train", "evaluate", "predict"]}
    for kind, names in steps.items():
        script = " && ".join(f"python -m components.{n} --help >/dev/null" for n in names)
        done = run_in(images[kind], script)
        assert done.returncode == 0, (kind, done.stderr[-2000:])


def test_the_images_benchmark_prints_each_images_size(images):
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "images.py"), "--no-rebuild",
                           "--tag-cpu", images["cpu"], "--tag-gpu", images["gpu"]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    head, cpu, gpu = done.stdout.strip().splitlines()
    assert head.split()[:4] == ["image", "tag", "base", "size"]
    assert cpu.startswith(f"cpu   {images['cpu']}") and " GB " in cpu and "< 3 GB" in cpu
    assert gpu.startswith(f"gpu   {images['gpu']}")
