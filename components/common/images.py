"""Container images the steps run in on a cluster, built from docker/ (`run --runner docker` takes defaults' local tags)."""
# compile.py --image-cpu/--image-gpu replace these in the compiled spec.
CPU_IMAGE = "ghcr.io/emotionet-au/pipeline-cpu:0.1.0"
GPU_IMAGE = "ghcr.io/emotionet-au/pipeline-gpu:0.1.0"
