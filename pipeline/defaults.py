"""Every default of the pipeline, in one place: the DAG's parameters, the CLIs and the runners read them here.

Each step owns one section. A value here is what a user gets when they pass nothing;
`python pipeline.py run --help` and the KFP UI show the same numbers.
"""
from pathlib import Path

PIPELINE_NAME = "emotionet-au-pipeline"
PIPELINE_DESCRIPTION = (
    "EmotioNet sheet -> downloaded faces -> validated, converted and filtered TFRecords -> "
    "fine-tuned Keras Action Unit detector -> evaluation and blessing -> versioned push."
)
REPO_ROOT = Path(__file__).resolve().parent.parent
# Where local runs keep their pipeline roots; runs/<run-id>/ per run.
RUNS_DIR = "runs"
# The demo's server answers in milliseconds; its stalling fault URLs should not hold the run
# for the production timeout.
DEMO_DOWNLOAD_TIMEOUT = 3.0

# --- ingest -------------------------------------------------------------------------------
# No default sheet: `pipeline.py run` without --source generates and serves the demo set;
# a compiled pipeline is given the sheet's gs:// URI when the run is created.
SOURCE = ""

# --- demo ---------------------------------------------------------------------------------
# The synthetic demo set `make run` generates and serves (pipeline/demo).
DEMO_SIZE = 2000
DEMO_SEED = 0
DEMO_IMAGE_SIZE = 128  # px, square; a few faces come at other sizes, as on the web
DEMO_DIR = "runs/demo"  # where `pipeline.py run` and `python -m pipeline.demo` keep the set
DEMO_SHEET = "sheet.xlsx"  # the sheet written beside the set, its URLs pointing at the server
# Timeout URLs stall this long (or until the server stops): longer than the download timeout.
DEMO_STALL_SECONDS = 30.0

# --- download -----------------------------------------------------------------------------
DOWNLOAD_STORE = ""  # "" = no store; pipeline.py run uses runs/store/ so reruns resume
DOWNLOAD_WORKERS = 32
DOWNLOAD_TIMEOUT = 10.0  # seconds: connect, read, and the total deadline of one request
DOWNLOAD_MAX_ATTEMPTS = 3
DOWNLOAD_MAX_BYTES = 20 * 1024 * 1024
DOWNLOAD_ALLOW_PRIVATE = True  # set False on a cluster that faces the internet

# --- validate -----------------------------------------------------------------------------
VALIDATE_SCHEMA_URI = ""  # "" = infer each run; pipeline.py run keeps it in runs/schema/
VALIDATE_MAX_ANOMALIES = 0

# --- convert ------------------------------------------------------------------------------
CONVERT_VALIDATION_FRACTION = 0.15
CONVERT_TEST_FRACTION = 0.15
CONVERT_MAX_SIDE = 0  # 0 keeps each image's size
CONVERT_BEAM_ARGS = ""

# --- filter -------------------------------------------------------------------------------
FILTER_AUS = "1,2,4,5,6,9,12,17,20,25,26"
FILTER_POLICY = "drop"

# --- train --------------------------------------------------------------------------------
TRAIN_TASK = "au"
TRAIN_BACKBONE = "mobilenetv3small"
TRAIN_IMAGE_SIZE = 0  # 0 follows the backbone
TRAIN_WEIGHTS = "none"
TRAIN_FINE_TUNE = "full"
TRAIN_EPOCHS = 10
TRAIN_BATCH_SIZE = 0  # 0 follows the backbone (the study: 128, 32 for VGG16)
TRAIN_OPTIMIZER = "rmsprop"
TRAIN_LEARNING_RATE = 0.001
TRAIN_SEED = 0

# --- evaluate -----------------------------------------------------------------------------
EVALUATE_MIN_MACRO_F1 = 0.5
EVALUATE_MIN_MACRO_AUC = 0.7
EVALUATE_TOLERANCE = 0.01

# --- push ---------------------------------------------------------------------------------
REGISTRY = "runs/registry"
MODEL_NAME = "au-detector"
PUSH_FORCE = False
PUSH_KEEP = 0  # 0 keeps every version

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
