# clerk-sync as a container: built in one stage, run in a small Debian as a non-root
# user. With no DATABASE_URL it keeps SQLite in /data (mount a volume there); in
# production give it DATABASE_URL (and DIRECT_URL on Neon) and CLERK_* (docs/operations.md, Container).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that a change to src/ rebuilds only the crate.
COPY Cargo.toml Cargo.lock build.rs ./
COPY vendor vendor
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY migrations migrations
COPY src src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin clerk-sync \
 && install -m 0755 target/release/clerk-sync /usr/local/bin/clerk-sync

FROM debian:bookworm-slim
# TLS uses rustls with the webpki roots built into the binary, for the database (sqlx) and
# for the Clerk API (outbox/clerk_client.rs), and SQLite is bundled: the binary needs
# nothing from the image but libc, no ca-certificates (tests/api/startup.rs starts it with
# an empty CA store and CLERK_SECRET_KEY set).
RUN useradd --system --uid 10001 --home-dir /data --create-home --shell /usr/sbin/nologin clerk-sync
COPY --from=build /usr/local/bin/clerk-sync /usr/local/bin/clerk-sync
USER 10001:10001
WORKDIR /data
ENV HOST=0.0.0.0 \
    PORT=3000 \
    DATABASE_URL=sqlite:///data/clerk-sync.db \
    LOG_FORMAT=json
EXPOSE 3000
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["clerk-sync", "healthcheck"]
ENTRYPOINT ["clerk-sync"]
CMD ["serve"]
