#!/usr/bin/env bash
# Install the Debian packages the site build and the browser checks need:
# jekyll (build), chromium (headless checks, driven by pip's playwright), fonts-noto-color-emoji (default images),
# slurm-wlm and munge (the single-node SLURM cluster of tests/test_slurm.py, scripts/slurm_cluster.sh),
# graphviz (`dot` draws the workflow's rule graph, docs/rulegraph.svg: `snakemake --cores 1 rulegraph`),
# and npm only when no npm is on PATH (it fetches MathJax once).
# Idempotent: does nothing, not even `apt-get update`, when everything is installed.
set -euo pipefail

packages=(jekyll chromium fonts-noto-color-emoji slurm-wlm munge graphviz)
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "system deps: all installed (${packages[*]})"
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
fi

echo "system deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "${missing[@]}"
