//! The linear kernels' flags word (`Params::flags`), named once: the epilogue's options in
//! bits 0-5 and the tiled and narrow kernels' quad loading modes in bits 16-19. The shaders
//! spell the same bits as `FLAG_*` constants and `x_quads()`/`w_quads()`; a test reads them
//! out of the WGSL and checks them against these.

/// A set of flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(u32);

impl Flags {
    /// Add the bias.
    pub const BIAS: Flags = Flags(1);
    /// The gate epilogue, `y = aux * silu(y)`.
    pub const GATE: Flags = Flags(2);
    /// Add the product to what y holds.
    pub const ACCUMULATE: Flags = Flags(4);
    /// Keep the gate's input in `pre`.
    pub const KEEP_PRE: Flags = Flags(8);
    /// The gate's `aux` holds f16 pairs.
    pub const AUX_F16: Flags = Flags(16);
    /// Store y as f16 pairs.
    pub const Y_F16: Flags = Flags(32);
    /// Where x's and w's quad loading modes start (two bits each).
    const X_QUADS_SHIFT: u32 = 16;
    const W_QUADS_SHIFT: u32 = 18;

    /// `self` with `flag` set when `on`.
    pub fn with(self, flag: Flags, on: bool) -> Flags {
        if on {
            self.union(flag)
        } else {
            self
        }
    }

    pub fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// The quad loading modes of x and w (`quad_mode`'s 0-3).
    pub fn quads(x: u32, w: u32) -> Flags {
        debug_assert!(x < 4 && w < 4);
        Flags(x << Self::X_QUADS_SHIFT | w << Self::W_QUADS_SHIFT)
    }

    pub fn bits(self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shaders' constants are these.
    #[test]
    fn the_shaders_flags_are_these() {
        let common = include_str!("../../../shaders/linear_common.wgsl");
        let constant = |name: &str| -> u32 {
            let line = common
                .lines()
                .find(|l| l.starts_with(&format!("const {name}: u32 = ")))
                .unwrap_or_else(|| panic!("{name} not in linear_common.wgsl"));
            line.rsplit(' ')
                .next()
                .unwrap()
                .trim_end_matches("u;")
                .parse()
                .unwrap()
        };
        for (name, flag) in [
            ("FLAG_BIAS", Flags::BIAS),
            ("FLAG_GATE", Flags::GATE),
            ("FLAG_ACCUMULATE", Flags::ACCUMULATE),
            ("FLAG_KEEP_PRE", Flags::KEEP_PRE),
            ("FLAG_AUX_F16", Flags::AUX_F16),
            ("FLAG_Y_F16", Flags::Y_F16),
        ] {
            assert_eq!(constant(name), flag.bits(), "{name}");
        }
        let x = format!("(p.flags >> {}u) & 3u", Flags::X_QUADS_SHIFT);
        let w = format!("(p.flags >> {}u) & 3u", Flags::W_QUADS_SHIFT);
        let tiled = include_str!("../../../shaders/linear.wgsl");
        assert!(
            tiled.contains(&x) && tiled.contains(&w),
            "linear.wgsl: expected {x} and {w}"
        );
        assert!(
            include_str!("../../../shaders/linear_narrow.wgsl").contains(&w),
            "linear_narrow.wgsl: {w}"
        );
        assert_eq!(Flags::quads(2, 1).bits(), 2 << 16 | 1 << 18);
    }
}
