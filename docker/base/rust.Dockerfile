# syntax=docker/dockerfile:1
# A local stand-in for the official rust:1-bookworm image, for machines that
# reach no container registry (scripts/base-images.sh builds it and tags it
# rust:1-bookworm). The same layout as the official image: the toolchain
# under RUSTUP_HOME, rustup and its proxies (cargo, rustc, ...) in
# CARGO_HOME/bin, and the C toolchain and libraries of buildpack-deps that
# builds use. The toolchain is the host's, mounted into the build at
# /host/toolchain (its rustup at /host/rustup): no download.
FROM debian:bookworm
ARG RUST_TOOLCHAIN
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        ca-certificates curl file g++ gcc git libc6-dev libssl-dev make pkg-config procps xz-utils \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH
# Only what rustup's minimal profile installs: no documentation, no sources.
RUN test -n "${RUST_TOOLCHAIN}" \
 && install -d "${RUSTUP_HOME}/toolchains" "${CARGO_HOME}/bin" \
 && cp -a /host/toolchain/. "${RUSTUP_HOME}/toolchains/${RUST_TOOLCHAIN}" \
 && rm -rf "${RUSTUP_HOME}/toolchains/${RUST_TOOLCHAIN}/share/doc" \
           "${RUSTUP_HOME}/toolchains/${RUST_TOOLCHAIN}/lib/rustlib/src" \
 && install -m 0755 /host/rustup "${CARGO_HOME}/bin/rustup" \
 && for tool in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt; do \
        ln -s rustup "${CARGO_HOME}/bin/${tool}"; \
    done \
 && printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n\n[overrides]\n' \
        "${RUST_TOOLCHAIN}" > "${RUSTUP_HOME}/settings.toml" \
 && chmod -R a+w "${RUSTUP_HOME}" "${CARGO_HOME}" \
 && rustc --version && cargo --version
