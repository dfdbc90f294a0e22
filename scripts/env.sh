# Sourced by the other scripts: makes sure a wgpu adapter exists on Debian/Ubuntu.
# With no Vulkan driver installed it installs Mesa's lavapipe (Vulkan on the CPU), so the
# same commands work on machines with and without a GPU.
set -euo pipefail

if [ "$(uname -s)" = "Linux" ]; then
    # A driver manifest in either place, and the loader.
    if ! compgen -G '/usr/share/vulkan/icd.d/*.json' >/dev/null && ! compgen -G '/etc/vulkan/icd.d/*.json' >/dev/null \
        || ! ldconfig -p | grep -q 'libvulkan.so.1'; then
        echo "memlayers: no Vulkan driver found; installing Mesa's lavapipe (mesa-vulkan-drivers libvulkan1)" >&2
        SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
    fi
    # Vulkan, so a missing driver fails loudly instead of falling back to GL.
    export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
    # Mesa's window-system layer complains when this is unset (headless machines, CI).
    if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
        export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/memlayers-runtime-$(id -u)"
        mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
    fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "memlayers: cargo not found; install Rust (https://rustup.rs) and re-run" >&2
    exit 1
fi
