//! Golden pixel hashes: the same input and profile give the same pixels on every machine, because
//! only the bundled fonts are used. A change here means the rendering changed: check the PNGs
//! (set `LETHE_GOLDEN_DIR` to write them) and update the table on purpose.

mod common;

use common::{code_turns, fnv1a, latin_turns, mixed_script_turns};
use lethe_render::{Mode, Renderer, Turn};

/// (case, mode, FNV-1a 64 of the gray pixels).
const GOLDEN: &[(&str, &str, u64)] = &[
    ("latin", "tiny", 0x114fdbfaf4d0c695),
    ("latin", "small", 0x75ad8df0fdca32e4),
    ("latin", "base", 0xc0ac138d10bb568a),
    ("latin", "large", 0x0be9269daa0a30ea),
    ("latin", "gundam", 0x0be9269daa0a30ea),
    ("cjk_rtl", "tiny", 0x6024283d73bb61c8),
    ("cjk_rtl", "small", 0x29cb07f62adab290),
    ("cjk_rtl", "base", 0xa5fb35119c5e1500),
    ("cjk_rtl", "large", 0x1357174164ffc19c),
    ("cjk_rtl", "gundam", 0x1357174164ffc19c),
    ("code", "tiny", 0x086274eaf023d5ed),
    ("code", "small", 0x419ec6bfe8cb7e2e),
    ("code", "base", 0x9c5f1959c8ed50aa),
    ("code", "large", 0xaea223a68ebaa404),
    ("code", "gundam", 0xaea223a68ebaa404),
    ("emoji", "tiny", 0x9243d36fd3338603),
    ("emoji", "small", 0xd98e9dcf47b2597a),
    ("emoji", "base", 0xb9c46bba681219a8),
    ("emoji", "large", 0x3be6d5e127b4850d),
    ("emoji", "gundam", 0x3be6d5e127b4850d),
];

fn cases() -> Vec<(&'static str, Vec<Turn>)> {
    vec![
        ("latin", latin_turns()),
        ("cjk_rtl", mixed_script_turns()),
        ("code", code_turns()),
        (
            "emoji",
            vec![
                Turn::new("User", "Shipped! 🎉🚀 Thanks everyone 👍 💪"),
                Turn::new(
                    "Assistant",
                    "Great work 🌟 Time for a break 🧘\u{200d}\u{2640}\u{fe0f} ❤\u{fe0f}",
                ),
            ],
        ),
    ]
}

#[test]
fn golden_pixel_hashes_at_every_mode() {
    let r = Renderer::new().unwrap();
    let dir = std::env::var_os("LETHE_GOLDEN_DIR").map(std::path::PathBuf::from);
    let mut actual = Vec::new();
    for (name, turns) in cases() {
        let pages = r.paginate(&turns).unwrap();
        for mode in Mode::ALL {
            let img = r.rasterize(&pages[0], mode);
            if let Some(dir) = &dir {
                std::fs::write(
                    dir.join(format!("{name}-{mode}.png")),
                    img.to_png().unwrap(),
                )
                .unwrap();
            }
            actual.push((name, mode.name(), fnv1a(&img.pixels)));
        }
    }
    let table: String = actual
        .iter()
        .map(|(c, m, h)| format!("    (\"{c}\", \"{m}\", 0x{h:016x}),\n"))
        .collect();
    assert_eq!(
        actual.len(),
        GOLDEN.len(),
        "golden table incomplete; actual table:\n{table}"
    );
    for (a, g) in actual.iter().zip(GOLDEN) {
        assert_eq!(
            (a.0, a.1, a.2),
            (g.0, g.1, g.2),
            "pixel hash changed; actual table:\n{table}"
        );
    }
}
