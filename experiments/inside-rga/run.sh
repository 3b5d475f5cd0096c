#!/usr/bin/env bash
# Inside RGA: the ablations and controls of README "Inside RGA" (issue 13), as DVC experiments
# off the committed default run. Each `dvc exp run --temp` restores the unchanged stages from
# the run-cache and runs only the unlearning cells it names; collect.py then copies each
# experiment's metrics and curves into this folder.
# Usage (repository root): bash experiments/inside-rga/run.sh [name ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/../.."
SST='-S matrix.attacks=[badnets,addsent]'
declare -A EXP=(
  # controls: GA stopped where RGA's lambda first falls below 0.05 (BadNets epoch 5, AddSent epoch 3), retain + norm
  [controls]="$SST -S matrix.methods=[ga_stop,retain_norm] -S ga_stop.stop_epoch=5"
  [controls-addsent-stop3]="-S matrix.attacks=[addsent] -S matrix.methods=[ga_stop] -S ga_stop.stop_epoch=3"
  # utility ablations (beta = 0 is DGA and beta = 0.05 RGA, both in the default run)
  [beta-0.01]="$SST -S matrix.methods=[rga] -S rga.beta=0.01"
  [reset]="$SST -S matrix.methods=[ga,rga] -S unlearn.optimizer_reset=epoch"
  [wd]="$SST -S matrix.methods=[ga,rga] -S unlearn.weight_decay=0.01"
  [authors]="$SST -S matrix.methods=[ga,rga] -S unlearn.optimizer_reset=epoch -S unlearn.weight_decay=0.01"
  [squared]="$SST -S matrix.methods=[rga] -S rga.norm=squared"
  [anchor]="$SST -S matrix.methods=[rga] -S rga.anchor=poisoned"
  # the one cell of three-seeds whose RGA CACC falls late (AddSent seed 1: CUBE precision 0.50), with the true poison
  [addsent-1-oracle]="-S matrix.attacks=[addsent] -S matrix.seeds=[1] -S matrix.methods=[rga] -S detect.detector=oracle"
  [addsent-1-cube]="-S matrix.attacks=[addsent] -S matrix.seeds=[1] -S matrix.methods=[rga]"
  # AG-News (4 classes): both LFR definitions
  [ag]="-S matrix.datasets=[ag] -S matrix.attacks=[badnets] -S matrix.methods=[ga,rga]"
)
ORDER=(controls controls-addsent-stop3 beta-0.01 reset wd authors squared anchor addsent-1-cube addsent-1-oracle ag)
names=("$@"); [ ${#names[@]} -gt 0 ] || names=("${ORDER[@]}")
for n in "${names[@]}"; do
  [ -n "${EXP[$n]:-}" ] || { echo "unknown experiment $n; valid: ${ORDER[*]}" >&2; exit 2; }
  echo "== $n: ${EXP[$n]}"
  # shellcheck disable=SC2086
  bash scripts/in-venv.sh dvc exp run --temp -n "inside-$n" ${EXP[$n]}
done
bash scripts/in-venv.sh python experiments/inside-rga/collect.py "${names[@]}"
