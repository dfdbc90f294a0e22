# Sourced by scripts/test.sh (after env.sh): what the browser tests need, installed when
# missing: Debian's Chromium and ChromeDriver (never a downloaded browser), the wasm
# toolchain (scripts/wasm-tools.sh), and the web page's Node packages (web/package-lock.json).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "memlayers: installing Debian's chromium and chromium-driver for the browser tests" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if ! command -v node >/dev/null 2>&1; then
    echo "memlayers: the browser tests need Node.js >= 20 (and npm)" >&2
    exit 1
fi
bash scripts/wasm-tools.sh
if [ ! -d web/node_modules/playwright-core ]; then
    (cd web && npm ci --no-audit --no-fund)
fi
# wasm-bindgen-test-runner drives Chromium through ChromeDriver (options in web/wasm/webdriver.json).
export CHROMEDRIVER="${CHROMEDRIVER:-$(command -v chromedriver)}"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-900}"
