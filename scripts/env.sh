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
    # Debian 12 ships Mesa 22.3, whose lavapipe loads storage buffers one lane at a time:
    # Mesa 25 from bookworm-backports runs these kernels 2-4x faster (README, "Speed on CPUs").
    # Only on machines without a GPU (no DRM render node, no NVIDIA driver), where lavapipe is
    # what runs; MEMLAYERS_KEEP_MESA=1 skips it.
    if [ -z "${MEMLAYERS_KEEP_MESA:-}" ] && grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null \
        && ! compgen -G '/dev/dri/renderD*' >/dev/null \
        && ! compgen -G '/usr/share/vulkan/icd.d/nvidia*' >/dev/null && ! compgen -G '/etc/vulkan/icd.d/nvidia*' >/dev/null \
        && dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | grep -q '^22\.'; then
        echo "memlayers: lavapipe is Mesa 22.3; installing Mesa 25 from bookworm-backports (2-4x faster kernels)" >&2
        SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        # The machine's own Debian mirror (the one serving bookworm), from its apt sources:
        # one-line (.list) or deb822 (.sources) format.
        mirror="$(awk '/^deb / && / bookworm / && !/security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:/) { print $i; exit } }' \
                /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)"
        if [ -z "$mirror" ]; then
            mirror="$(awk '/^URIs:/ { uri = $2 } /^Suites:/ && / bookworm( |$)/ && uri !~ /security/ { print uri; exit }' \
                    /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
        fi
        if [ -z "$mirror" ]; then
            echo "memlayers: no Debian bookworm mirror in the apt sources; keeping Mesa 22.3" >&2
        else
            echo "deb $mirror bookworm-backports main" \
                | $SUDO tee /etc/apt/sources.list.d/memlayers-bookworm-backports.list >/dev/null
            $SUDO apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers >/dev/null
        fi
    fi
    # Mesa's EGL and GL driver: the tests also run a subset on wgpu's GL back end (llvmpipe),
    # from the same Mesa as lavapipe.
    if ! ldconfig -p | grep -q 'libEGL_mesa.so.0' && command -v apt-get >/dev/null; then
        echo "memlayers: installing Mesa's EGL and GL driver (libegl-mesa0 libgl1-mesa-dri) for the GL back end" >&2
        SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        release=()
        if compgen -G '/etc/apt/sources.list.d/memlayers-bookworm-backports.list' >/dev/null; then
            release=(-t bookworm-backports)
        fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${release[@]}" libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
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
