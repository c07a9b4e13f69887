#!/usr/bin/env bash
# Installs the system programs PatentFlow needs, only when missing:
#   tesseract (OCR; always), chromium (headless UI tests) and postgresql (the servers the
#   production-configuration tests start) with --test.
set -euo pipefail
need=()
command -v tesseract >/dev/null 2>&1 || need+=(tesseract-ocr)
command -v git >/dev/null 2>&1 || need+=(git)
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)  # METEOR / PTB tokenizer jars
if [[ "${1:-}" == "--test" ]]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
fi
[[ ${#need[@]} -eq 0 ]] && exit 0
echo "installing system packages: ${need[*]}"
sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
