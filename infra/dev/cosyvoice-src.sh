#!/usr/bin/env bash
# A snapshot of the official CosyVoice code at the commit voicefarm is tested with, and its
# Matcha-TTS submodule, for VOICEFARM_COSYVOICE_SRC (the official code is not on PyPI).
#
#   infra/dev/cosyvoice-src.sh <dest> [<cosyvoice-git-url-or-dir> <matcha-git-url-or-dir>]
#
# Writes <dest> (the CosyVoice tree) and <dest>/third_party/Matcha-TTS with `git archive` of
# the pinned commits: no .git, nothing else. Sources default to the GitHub repositories; a
# local clone or mirror works offline. Then: VOICEFARM_COSYVOICE_SRC=<dest>.
set -euo pipefail

COSYVOICE_COMMIT=ace7c47f41bbd303aa6bf1ea80e6f9fbd595cd40
MATCHA_COMMIT=dd9105b34bf2be2230f4aa1e4769fb586a3c824e

dest=${1:?usage: $0 <dest> [<cosyvoice-git-url-or-dir> <matcha-git-url-or-dir>]}
cosyvoice_src=${2:-https://github.com/FunAudioLLM/CosyVoice.git}
matcha_src=${3:-https://github.com/shivammehta25/Matcha-TTS.git}

# Prints a git directory holding <commit>: the source itself when it is a local repository
# that has it, else a temporary bare clone fetched from it.
git_dir_with() {
  local src=$1 commit=$2 tmp
  if [ -d "$src" ] && git -C "$src" cat-file -e "$commit^{commit}" 2>/dev/null; then
    echo "$src"
    return
  fi
  tmp=$(mktemp -d)
  git init -q --bare "$tmp"
  git -C "$tmp" fetch -q --depth 1 "$src" "$commit" >&2
  echo "$tmp"
}

archive() {
  local src=$1 commit=$2 out=$3 gd
  gd=$(git_dir_with "$src" "$commit")
  mkdir -p "$out"
  git -C "$gd" archive --format=tar "$commit" | tar -x -C "$out"
  if [ "$gd" != "$src" ]; then rm -rf "$gd"; fi
}

if [ -e "$dest/cosyvoice/cli/cosyvoice.py" ]; then
  echo "$dest already holds a CosyVoice snapshot; remove it to make a new one" >&2
  exit 1
fi
archive "$cosyvoice_src" "$COSYVOICE_COMMIT" "$dest"
rm -rf "$dest/third_party/Matcha-TTS"  # the empty submodule directory of the archive
archive "$matcha_src" "$MATCHA_COMMIT" "$dest/third_party/Matcha-TTS"
printf 'CosyVoice %s\nMatcha-TTS %s\n' "$COSYVOICE_COMMIT" "$MATCHA_COMMIT" >"$dest/VOICEFARM_SNAPSHOT"
echo "CosyVoice snapshot in $dest: export VOICEFARM_COSYVOICE_SRC=$(cd "$dest" && pwd)"
