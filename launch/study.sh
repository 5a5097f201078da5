#!/usr/bin/env bash
# The study of docs/STUDY.md (where does PrOSV win?) as pieces that each fit one sitting of a
# 2-core CPU. Every piece resumes: rerun the same piece after an interruption and its finished
# runs are skipped, interrupted ones continue from their checkpoints. Results go under
# runs/study/ (kept in git without checkpoints: commit runs/ after each piece). A fresh
# checkout has no checkpoints, so a cell cut off by the end of a session starts again from
# step 0 there; to carry it over, run `bash launch/study.sh carry` and commit: it stages the
# latest checkpoint (about 100 KB) of every unfinished cell and unstages those of finished ones.
#
#   bash launch/study.sh list        the pieces in the order their inputs need
#   bash launch/study.sh PIECE       run one piece, e.g. prosv-grid-1
#   bash launch/study.sh PIECE --config.x=y ...   the same with overrides for every run
#                                    (STUDY_ROOT=... puts the results elsewhere)
#
# Full budget (12 epochs, whole responses, batch 12), SmolLM2-135M-Instruct L10, Concept10
# 2b_l10 concepts 0 and 1 trained together (equal to two separate runs). Cells are chosen by
# the steered loss on AxBench's held-out positives of those concepts (collect.py --best), which
# no steering evaluation reads; launch/evaluate.py then reports on held-out instructions.
set -euo pipefail
# The whole script is one brace group, which bash reads to its end before running any of it:
# editing (or a git checkout of) this file while a piece runs cannot change what that piece
# does next. Replace it by rename (os.replace, git), so the running bash keeps its old copy.
{
cd "$(dirname "$0")/.."

D=../shared/data/axbench/concept10/prod_2b_l10_v1
ROOT=${STUDY_ROOT:-runs/study}
DATA=(--config.data.source=$D --config.data.metadata=$D/metadata.jsonl
      --config.data.concepts=0,1)
# The residual rule with the numbers stated at SmolLM2's residual RMS (SMOLLM2_L10_RMS).
RESIDUAL=(--config.steer.init=residual --config.steer.residual_ref=6.0)
# gemma-paper and gemma-width on another Concept10 concept (GEMMA_CONCEPT=1): the transfer
# check's second concept. Concept 0 keeps its run folder `chosen`; others go to `conceptN`.
GC=${GEMMA_CONCEPT:-0}
GDIR=chosen
[ "$GC" = 0 ] || GDIR=concept$GC

sweep() {  # sweep CONFIG NAME ROOT [flags...]
  local config=$1 name=$2 root=$3
  shift 3
  # --separate: each cell is its own run. Three cells as slots of one step (x 2 concepts,
  # whole responses) need 20-25 GB of XLA temp memory per step on SmolLM2 (its compiled
  # memory_analysis), more than this 24 GiB machine; one cell needs 8-9 GB. On a 2-core CPU
  # slots save only 7-13% of wall time (docs/PERFORMANCE.md), so nothing is lost.
  python launch/sweep.py --config="$config" --sweep="$name" --root="$root" --separate "$@" \
    "${EXTRA[@]}"
}

chosen() {  # chosen ROOT PIECES: the --config flags of ROOT's run with the lowest held-out
  # loss (collect.py --best), or an error naming the pieces to run first
  local out
  out=$(python launch/collect.py --root="$1" --best=heldout_loss 2>/dev/null \
        | sed -n 's/^best by heldout_loss: [^ ]* ([^)]*) //p') || true
  if [ -z "$out" ]; then
    echo "error: $1 has no finished run with held-out figures yet; run $2 first" >&2
    return 1
  fi
  echo "$out"
}

piece=${1:-list}
EXTRA=("${@:2}")
case $piece in
  list)
    cat <<'EOF'
piece           runs (concept-runs)            what
prosv-grid-1..3 3 cells x 2 concepts each      PrOSV (beta, factor LR) 3x3, one beta row each
prosv-grid-0    3 x 2                          the row below (beta 1/16), as the pick sat at
                                               the smallest beta (its chosen cell then reads
                                               all four rows)
fssv-grid-1..3  3 x 2 each                     FSSV the same grid
fssv-grid-0     3 x 2                          FSSV's row below, if its pick sits at beta 0.25
prosv-dir-1..2  3 x 2 each                     PrOSV (s, direction LR) 2x3 at prosv-grid's cell
fssv-dir-1..2   3 x 2 each                     FSSV the same at fssv-grid's cell
prosv-dir-0,    2 x 2                          the column below (direction LR 0.02, s 1 and
fssv-dir-0                                     8), if a method's pick sits at 0.04
prosv-pos-1..2  2 x 2 each                     p2+s2, s4 | p4+s4, prompt at PrOSV's chosen cell
gemma-grid      3 x 1 (gemma3-270m)            PrOSV's chosen cell on gemma3-270m under the
                                               residual rule (ref: SmolLM2's RMS), beta in
                                               {1/16, 1/4, 1} (concept 0; 1/16 is SmolLM2's
                                               pick carried over unchanged)
gemma-width     1 x 1 (gemma3-270m)            the same cell under the width rule, unchanged
gemma-paper     1 x 1 (gemma3-270m)            the paper's PrOSV row (beta 4, factor LR 10,
                                               s 8, direction LR 0.04; width rule) on the
                                               same concept: the reference both rules face
                                               (gemma-paper and gemma-width take another
                                               concept with GEMMA_CONCEPT=1, into conceptN/)
score           -                              offline-judge score of every finished cell
collect         -                              CSVs and heatmaps (held-out gain, score)
                                               under docs/study/
carry           -                              stage unfinished cells' latest checkpoints
                                               for git (then commit), unstage finished ones'
EOF
    ;;
  carry)
    # A cell is unfinished while its summary.json is missing. Only the newest step travels:
    # the trainer resumes from the latest checkpoint it finds.
    for ckpts in "$ROOT"/*/*/checkpoints; do
      [ -d "$ckpts" ] || continue
      cell=$(dirname "$ckpts")
      if [ -f "$cell/summary.json" ]; then
        if [ -n "$(git ls-files "$ckpts")" ]; then
          git rm -r -q --cached "$ckpts"
          echo "unstaged $ckpts (finished)"
        fi
        continue
      fi
      latest=$(ls "$ckpts" | grep -E '^[0-9]+$' | sort -n | tail -1 || true)
      [ -n "$latest" ] || continue
      if git ls-files "$ckpts" | grep -qv "^$ckpts/$latest/"; then
        git rm -r -q --cached "$ckpts"  # an older step carried before; only the latest goes
      fi
      git add -f "$ckpts/$latest"
      echo "staged $ckpts/$latest ($(du -sh "$ckpts/$latest" | cut -f1))"
    done
    ;;
  prosv-grid-[123]|fssv-grid-[123])
    method=${piece%%-*}
    sweep "configs/$method.py" study_beta_lr "$ROOT/${method}_beta_lr" "${DATA[@]}" \
      --part="${piece##*-}/3"
    ;;
  prosv-grid-0|fssv-grid-0)
    method=${piece%%-*}
    sweep "configs/$method.py" study_beta_lr_low "$ROOT/${method}_beta_lr" "${DATA[@]}"
    ;;
  prosv-dir-[012]|fssv-dir-[012])
    method=${piece%%-*}
    cell=$(chosen "$ROOT/${method}_beta_lr" "$method-grid-1..3")
    name=study_direction_low part=  # piece 0: the one-column grid, not split
    if [ "${piece##*-}" != 0 ]; then
      name=study_direction part=--part="${piece##*-}/2"
    fi
    # Its cell at the method's own s and direction LR is the grid's chosen run: copied.
    # shellcheck disable=SC2086  # the chosen cell's flags, one word each
    sweep "configs/$method.py" "$name" "$ROOT/${method}_direction" "${DATA[@]}" \
      $cell ${part:+"$part"} --reuse="$ROOT/${method}_beta_lr"
    ;;
  prosv-pos-[12])
    cell=$(chosen "$ROOT/prosv_beta_lr" "prosv-grid-1..3")
    direction=$(chosen "$ROOT/prosv_direction" "prosv-dir-1..2")
    # shellcheck disable=SC2086
    sweep configs/prosv.py study_positions "$ROOT/prosv_positions" "${DATA[@]}" \
      $cell $direction --part="${piece##*-}/2" \
      --reuse="$ROOT/prosv_direction,$ROOT/prosv_beta_lr"  # p2+s2 is the chosen run
    ;;
  gemma-grid)
    cell=$(chosen "$ROOT/prosv_beta_lr" "prosv-grid-1..3")
    direction=$(chosen "$ROOT/prosv_direction" "prosv-dir-1..2")
    # SmolLM2's factor LR, s and direction LR; beta swept around SmolLM2's (the residual
    # rule at residual_ref 6 makes beta mean on gemma3 what it meant on SmolLM2, so the cell
    # at SmolLM2's beta is its preset carried over by that rule).
    flr=$(grep -o -- '--config.optim.factor_lr=[^ ]*' <<<"$cell")
    # shellcheck disable=SC2086
    sweep configs/prosv.py:gemma3_270m study_beta "$ROOT/gemma_residual" \
      --config.data.source=$D --config.data.metadata=$D/metadata.jsonl \
      --config.data.concepts=0 "${RESIDUAL[@]}" "$flr" $direction
    ;;
  gemma-paper)
    # Pinned by flags rather than read from the gemma3_270m preset, so the cell keeps its
    # meaning whatever the study puts into that preset.
    python launch/train.py --config=configs/prosv.py:gemma3_270m \
      --config.data.source=$D --config.data.metadata=$D/metadata.jsonl \
      --config.data.concepts=$GC --config.steer.init=width --config.steer.beta=4 \
      --config.optim.factor_lr=10 --config.steer.direction_scale=8 \
      --config.optim.direction_lr=0.04 \
      --config.workdir="$ROOT/gemma_paper/$GDIR" "${EXTRA[@]}"
    ;;
  gemma-width)
    cell=$(chosen "$ROOT/prosv_beta_lr" "prosv-grid-1..3")
    direction=$(chosen "$ROOT/prosv_direction" "prosv-dir-1..2")
    # shellcheck disable=SC2086
    python launch/train.py --config=configs/prosv.py:gemma3_270m \
      --config.data.source=$D --config.data.metadata=$D/metadata.jsonl \
      --config.data.concepts=$GC $cell $direction \
      --config.workdir="$ROOT/gemma_width/$GDIR" "${EXTRA[@]}"
    ;;
  score)
    for root in "$ROOT"/*/; do
      extra=()
      # gemma3-270m is a base model: no chat template to rate fluency under, so the
      # SmolLM2-calibrated judge rates its generations.
      case "$(basename "$root")" in gemma_*) extra=(--config.judge.fluency_model=smollm2-135m-instruct) ;; esac
      python launch/score_sweep.py --root="$root" --config.instructions.count=10 "${extra[@]}"
    done
    ;;
  collect)
    mkdir -p docs/study
    for root in "$ROOT"/*/; do
      name=$(basename "$root")
      python launch/collect.py --root="$root" --out="docs/study/$name.csv"
    done
    for m in prosv fssv; do
      [ -f "docs/study/${m}_beta_lr.csv" ] || continue
      python launch/plot_study.py --csv="docs/study/${m}_beta_lr.csv" --kind=heatmap \
        --metric=heldout_gain --out="docs/study/${m}_beta_lr_heldout.png"
      # the offline judge's score of each cell (the score piece), where it has run
      if grep -q ',score' <(head -1 "docs/study/${m}_beta_lr.csv"); then
        python launch/plot_study.py --csv="docs/study/${m}_beta_lr.csv" --kind=heatmap \
          --metric=score --out="docs/study/${m}_beta_lr_score.png"
      fi
    done
    # the (s, direction LR) grid as a map; the one-axis pieces (positions, gemma's init rules)
    # as bars of the held-out loss against their best run, with its paired interval
    for m in prosv fssv; do
      [ -f "docs/study/${m}_direction.csv" ] || continue
      python launch/plot_study.py --csv="docs/study/${m}_direction.csv" --kind=heatmap \
        --metric=heldout_loss --x=optim.direction_lr --y=steer.direction_scale \
        --out="docs/study/${m}_direction_heldout.png"
    done
    if [ -f docs/study/prosv_positions.csv ]; then
      python launch/plot_study.py --csv=docs/study/prosv_positions.csv --kind=bars \
        --metric=heldout_vs_best --out=docs/study/prosv_positions_heldout.png
    fi
    # gemma3-270m's cells live in two roots (one per init rule): their held-out change
    # against the unsteered model, side by side
    if [ -f docs/study/gemma_residual.csv ] && [ -f docs/study/gemma_width.csv ]; then
      python launch/plot_study.py --csv=docs/study/gemma_width.csv,docs/study/gemma_residual.csv \
        --kind=bars --metric=heldout_gain --out=docs/study/gemma_grid_heldout.png
    fi
    ;;
  *)
    echo "error: unknown piece '$piece'; bash launch/study.sh list shows the pieces" >&2
    exit 2
    ;;
esac
exit
}
