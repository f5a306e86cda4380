# Sourced by the device-tool scripts here: installs the carried wheels (.whl/, made
# by prepare.sh) and points bnlab at the carried Fashion-MNIST files (.data/).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site BNLAB_DATA_DIR=$PWD/.data PYTHONUNBUFFERED=1 TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}
LOG="$OUT/log.txt"
nvidia-smi -L | tee -a "$LOG"
