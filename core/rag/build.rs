//! Compiles the faiss bridge and links Debian's static libfaiss (libfaiss-dev).

fn main() {
    cxx_build::bridge("src/faiss.rs")
        .file("cxx/faiss_bridge.cc")
        .std("c++17")
        .flag_if_supported("-O2")
        .compile("tailor_faiss_bridge");
    // Debian puts the static library in the multiarch folder.
    for dir in ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib"] {
        println!("cargo:rustc-link-search=native={dir}");
    }
    println!("cargo:rustc-link-lib=static=faiss");
    for lib in ["gomp", "blas", "lapack", "stdc++"] {
        println!("cargo:rustc-link-lib={lib}");
    }
    println!("cargo:rerun-if-changed=cxx/faiss_bridge.cc");
    println!("cargo:rerun-if-changed=cxx/faiss_bridge.h");
}
