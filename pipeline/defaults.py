"""What no single step owns: the pipeline's name, the demo, the runners, the cluster, sweeps, images and presets.

A step's parameters are declared once, in components/<step>/params.py (see docs/architecture.md, "Adding a
parameter"); the DAG, the CLIs, `pipeline.py run --help` and the KFP UI read them there.
"""
from pathlib import Path

from components.filter import params as filter_params

PIPELINE_NAME = "emotionet-au-pipeline"
PIPELINE_DESCRIPTION = (
    "EmotioNet sheet -> downloaded faces -> validated, converted and filtered TFRecords -> "
    "fine-tuned Keras Action Unit detector -> evaluation and blessing -> versioned push."
)
# The annotate DAG (pipeline/annotate_dag.py): a whole dataset annotated with a pushed model.
ANNOTATE_PIPELINE_NAME = "emotionet-au-annotate"
ANNOTATE_PIPELINE_DESCRIPTION = "EmotioNet sheet -> downloaded images -> every face's Action Units by a pushed model."
REPO_ROOT = Path(__file__).resolve().parent.parent
# Where local runs keep their pipeline roots; runs/<run-id>/ per run.
RUNS_DIR = "runs"
# The demo's server answers in milliseconds; its stalling fault URLs should not hold the run
# for the production timeout.
DEMO_DOWNLOAD_TIMEOUT = 3.0

# --- demo ---------------------------------------------------------------------------------
# The synthetic demo set `make run` generates and serves (pipeline/demo).
DEMO_SIZE = 2000
DEMO_SEED = 0
DEMO_IMAGE_SIZE = 128  # px, square; a few faces come at other sizes, as on the web
# wild: web photos, the face small in a cluttered scene (pipeline/demo/scenes.py); portrait: the
# face fills an image_size square, as in GENERATOR_VERSION 1; small-faces: wild scenes of 480..1024 px
# whose face is 10-22% of the shorter side (group photos, half-body shots: scenes.SMALL_FACES).
DEMO_SCENES = ("wild", "portrait", "small-faces")
DEMO_SCENE = "wild"
DEMO_DIR = "runs/demo"  # where `pipeline.py run` and `python -m pipeline.demo` keep the set
DEMO_SHEET = "sheet.xlsx"  # the sheet written beside the set, its URLs pointing at the server
# Timeout URLs stall this long (or until the server stops): longer than the download timeout.
DEMO_STALL_SECONDS = 30.0
# The server tries this port first (then PORT+1 for TLS, PORT+2 for "refused"), so a rerun sees
# the same URLs and the download store resumes; any free port when taken. 0: always a free port.
DEMO_PORT = 47321

# convert, its face settings and filter: components/convert/params.py, components/common/faces.py (FACE_PARAMS,
# DETECTOR, DETECT_MAX_SIDE), components/common/imaging.py (JPEG_QUALITY), components/filter/params.py.

# train, evaluate and push: components/train/params.py (SCRATCH_BN_MOMENTUM too), components/evaluate/params.py,
# components/push/params.py; the registry and model name they share: components/common/params.py.

# --- cluster ------------------------------------------------------------------------------
# compile.py / pipeline.py submit|schedule. The images default to components/common/images.py.
# CPU and memory per step: (cpu request, cpu limit, memory request, memory limit), Kubernetes
# quantities. Requests decide the node a pod fits on; Vertex AI picks its machine from the limits.
# train's fit a GKE n1-standard-8 + 1 T4 node (7.9 CPU, ~26 GiB allocatable).
CLUSTER_RESOURCES = {
    "ingest": ("1", "2", "2Gi", "4Gi"),
    "download": ("2", "4", "2Gi", "4Gi"),
    "validate": ("2", "4", "8Gi", "16Gi"),
    "convert": ("4", "8", "8Gi", "16Gi"),
    "filter-examples": ("2", "4", "4Gi", "8Gi"),
    "train": ("6", "8", "20Gi", "26Gi"),
    "evaluate": ("2", "4", "8Gi", "16Gi"),
    "push": ("500m", "1", "1Gi", "2Gi"),
    "report": ("500m", "1", "1Gi", "2Gi"),
    "annotate": ("4", "8", "8Gi", "16Gi"),  # the annotate DAG's (pipeline/annotate_dag.py): a model per core
}
# Steps that talk to the network or to a Beam runner fail for passing reasons (a 503, a
# preempted node); KFP reruns them with backoff. Their work resumes, so a retry repeats nothing.
CLUSTER_RETRY_STEPS = ("ingest", "download", "validate", "convert", "filter-examples")
CLUSTER_RETRIES = 3
CLUSTER_RETRY_BACKOFF = "60s"  # the first wait; then x CLUSTER_RETRY_BACKOFF_FACTOR each time
CLUSTER_RETRY_BACKOFF_FACTOR = 2.0
CLUSTER_RETRY_BACKOFF_MAX = "3600s"  # KFP's cap
# Steps whose outputs depend only on their inputs. ingest and download read the world (the
# sheet at a URI, the web), validate reads the schema kept at schema_uri, train is not
# bit-reproducible on a GPU, evaluate reads the live model and push writes the registry.
CLUSTER_CACHED_STEPS = ("convert", "filter-examples")
CLUSTER_GPU_STEPS = ("train",)  # + "evaluate" with --gpu-evaluate
CLUSTER_GPU_TYPE = "nvidia.com/gpu"  # Kubernetes resource; Vertex AI wants e.g. NVIDIA_TESLA_T4
CLUSTER_GPU_COUNT = 1
# Where a mounted service-account key appears with --gcp-credentials-secret (GKE without
# workload identity); the secret holds the key under `key.json`.
CLUSTER_CREDENTIALS_MOUNT = "/var/secrets/google"
CLUSTER_CREDENTIALS_FILE = "key.json"
KFP_EXPERIMENT = "emotionet-au"

# --- sweep (pipeline.py sweep | sweep-submit | sweep-pick) ----------------------------------
# A grid of train/evaluate parameters over one pass of the data steps (pipeline/sweep/).
SWEEP_MAX_POINTS = 32  # a larger grid is refused unless --max-points says so: a typo should not start 500 trainings
SWEEP_PUSH = "best"  # which models a sweep pushes: best, all (best last, so LATEST names it) or none; each only when blessed
SWEEP_PUSH_MODES = ("best", "all", "none")
SWEEP_DATA_DIR = "data"  # <sweep-dir>/data/: the data steps' outputs and logs, shared by every point
# On a cluster each run pushes (forced, so every model can be compared) into its own candidate registry,
# <registry>/sweeps/<sweep-id>/<point>/, never the live one; sweep-pick compares them and pushes the best.
SWEEP_CANDIDATES = "sweeps"
SWEEP_PLAN = "sweep_plan.json"  # what sweep-submit started, kept in <runs-dir>/<sweep-id>/ for sweep-pick
# sweep-submit waits this long for its data run (the data steps, once) before it starts the points' runs.
SWEEP_DATA_TIMEOUT = 24 * 3600  # seconds
SWEEP_POLL_SECONDS = 30  # between two looks at the data run's state

# --- containers (make images; pipeline.py run --runner docker) --------------------------------------------------
# The tags `make images` builds and a container run uses; compile.py --image-cpu/--image-gpu take them too.
LOCAL_IMAGE_CPU = "emotionet-au/pipeline-cpu:local"
LOCAL_IMAGE_GPU = "emotionet-au/pipeline-gpu:local"
# Where docker/Dockerfile.gpu's BACKBONE_WEIGHTS_URL puts a weights file, for train's --weights on a cluster offline.
IMAGE_WEIGHTS_DIR = "/opt/weights"
# Where the public bases (docker/Dockerfile.*'s BASE_IMAGE) can't be pulled, both images are built on this stand-in:
# Debian's minbase with Python 3.11, pip and venv, as python:3.11-slim-bookworm has them (no CUDA).
STANDIN_BASE_IMAGE = "emotionet-au/standin-python:3.11-bookworm"
STANDIN_DEBIAN_SUITE = "bookworm"
STANDIN_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
# In a container run these steps get the host's network (the demo server is on loopback); the others run with
# --network none, unless a parameter is a gs:// URI.
CONTAINER_NETWORK_STEPS = ("download",)
# The runners of `pipeline.py run`: each task a subprocess in this environment, or a container of its image.
RUNNERS = ("local", "docker")


# --- presets: the study's experiments, a flag away (`--preset NAME`; flags given beside it win) --------
# The demo's recipe: `pipeline.py run` and `sweep` apply it to the demo set (without --source), under any other preset
# and the flags given; the pipeline's own defaults (the compiled spec, the KFP UI, `run --source`) are the recipe for
# real photos on a GPU (components/train/params.py). On the face crops of `make run`'s in-the-wild scenes (about 1,400
# train images) it trains on 2 CPU cores in about 2 minutes and reaches macro F1 0.88 at threshold 0.5 on the test
# split, 0.895 on a held-out set of another seed (benchmarks/faces.py). It differs from the study's where a CPU and no
# ImageNet weights (no internet) need it: compactcnn, a small separable CNN built to learn from scratch, at 128 px
# (image_size 0) and batch 32 (batch_size 0) from 160 px crops (keras.applications' MobileNetV3Small from scratch with
# the same settings reached 0.69 in 255 s); Adam at 0.002 (the study's RMSprop at 0.001 reached 0.75 in 16 epochs).
DEMO_PRESET = "demo"
PRESETS: dict[str, dict] = {
    DEMO_PRESET: {"backbone": "compactcnn", "weights": "none", "image_size": 0, "fine_tune": "full", "epochs": 16,
                  "batch_size": 0, "optimizer": "adam", "learning_rate": 0.002, "face_size": 160},
    # Its Table 3: all 60 AUs with 999 read as 0. Accuracy looks high because almost every label is
    # a 0 that was never annotated; F1 on the rare positives is near zero.
    "study-60au": {"aus": ",".join(str(a) for a in range(1, 61)), "policy": "zero"},
    # Its Table 5 recipe on the 11 well-annotated AUs: images with 999 dropped; RMSprop (decay 0.9,
    # momentum 0.9; the train step's defaults), lr 0.001 decayed x0.94 every 2 epochs, L2 4e-5;
    # Inception fine-tuned at its head, batch 128 (0 follows the backbone: --backbone vgg16 gives 32).
    "study-11au": {"aus": filter_params.SPEC.defaults.aus, "policy": "drop", "optimizer": "rmsprop",
                   "learning_rate": 0.001, "backbone": "inceptionv3", "fine_tune": "head", "weights": "imagenet",
                   "batch_size": 0},
}
