//! Layer benchmarks: warm lookup of a built recipe, and a container cycle over a 1-layer
//! vs a 100-layer stack (same rootfs, `/bin/true`), measured in the same run.
//!
//! `cargo bench --bench layers`. Needs `busybox` (package busybox-static) for the rootfs.

use std::path::Path;
use std::time::Duration;

use criterion::Criterion;
use pristine::{Container, Image, LayerSpec, Recipe, Store};

fn busybox_rootfs(dir: &Path) -> Option<()> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())?;
    std::fs::create_dir_all(dir.join("bin")).ok()?;
    std::fs::copy(busybox, dir.join("bin/busybox")).ok()?;
    for tool in ["sh", "true", "ls", "cat"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(tool)).ok()?;
    }
    Some(())
}

fn main() {
    // Before any thread exists: the container init is pristine's own binary.
    std::env::set_var("PRISTINE_INIT", env!("CARGO_BIN_EXE_pristine"));
    let quick = std::env::var_os("PRISTINE_BENCH_QUICK").is_some();
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(if quick { 20 } else { 60 })
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(if quick { 2 } else { 5 }));

    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let rootfs = tmp.path().join("rootfs");
    if busybox_rootfs(&rootfs).is_none() {
        eprintln!("busybox not found (apt-get install busybox-static): skipping layer benchmarks");
        return;
    }
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let mut deep = Recipe::rootfs(&rootfs);
    for i in 0..100 {
        let f = files.join(format!("f{i}"));
        std::fs::write(&f, format!("{i}\n")).unwrap();
        deep = deep.layer(LayerSpec::new(format!("l{i}")).copy(&f, format!("/data/f{i:03}")));
    }
    let shallow =
        Recipe::rootfs(&rootfs).layer(LayerSpec::new("l0").copy(files.join("f0"), "/data/f000"));
    let deep_image = deep.build(&store).unwrap();
    let shallow_image = shallow.build(&store).unwrap();
    let three = Recipe::rootfs(&rootfs)
        .layer(LayerSpec::new("a").copy(files.join("f1"), "/a"))
        .layer(LayerSpec::new("b").copy(files.join("f2"), "/b"))
        .layer(LayerSpec::new("c").copy(files.join("f3"), "/c"));
    let _ = three.build(&store).unwrap();

    let mut g = c.benchmark_group("layers");
    g.bench_function("warm_lookup_3_layers", |b| {
        b.iter(|| three.build(&store).unwrap())
    });
    let cycle = |image: &Image| {
        let out = Container::new(image.clone())
            .store(store.location())
            .run(["/bin/true"])
            .unwrap();
        assert!(out.status.success());
    };
    g.bench_function("cycle_1_layer", |b| b.iter(|| cycle(&shallow_image)));
    g.bench_function("cycle_100_layers", |b| b.iter(|| cycle(&deep_image)));
    g.finish();
    c.final_summary();

    // Medians from criterion's estimates, and the ratio the issue asks for.
    let median = |name: &str| -> Option<f64> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/criterion/layers")
            .join(name)
            .join("new/estimates.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        v["median"]["point_estimate"].as_f64()
    };
    if let (Some(w), Some(one), Some(hundred)) = (
        median("warm_lookup_3_layers"),
        median("cycle_1_layer"),
        median("cycle_100_layers"),
    ) {
        println!("\nlayers summary (medians):");
        println!("  warm lookup, 3 layers : {:>9.1} µs", w / 1e3);
        println!("  cycle, 1 layer        : {:>9.3} ms", one / 1e6);
        println!("  cycle, 100 layers     : {:>9.3} ms", hundred / 1e6);
        println!(
            "  100 / 1 layers        : {:>9.2}x  (target <= 1.5x)",
            hundred / one
        );
    }
}
