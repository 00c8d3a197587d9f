//! `walcast-jetstream`: the floor under the relay and the edges. Publishes
//! N messages of S bytes to a JetStream stream as the relay does (each with
//! a `Nats-Msg-Id`, many in flight, acknowledgements taken in order), then
//! reads them back with an ordered consumer as an edge does, and prints
//! both rates. No PostgreSQL, no walcast code: what JetStream itself does
//! on this machine, to compare the relay's and the edges' rates with.

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use clap::Parser;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "walcast-jetstream",
    about = "JetStream publish and read rates (the scale-out floor)"
)]
struct Args {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Messages.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    messages: u64,
    /// Bytes per message.
    #[arg(long, default_value_t = 250)]
    size: usize,
    /// Publishes in flight (the relay keeps 4096).
    #[arg(long, default_value_t = 4096)]
    in_flight: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to {}", args.nats_url))?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(args.in_flight)
        .backpressure_on_inflight(true)
        .build(client);
    let name = "WALCAST_FLOOR";
    let _ = js.delete_stream(name).await;
    js.create_stream(jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec!["floor.>".to_owned()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .context("creating the stream")?;
    let payload = bytes::Bytes::from(vec![b'x'; args.size]);
    let (tx, mut rx) = tokio::sync::mpsc::channel(args.in_flight);
    let acker = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(f) = rx.recv().await {
            let f: jetstream::context::PublishAckFuture = f;
            f.await?;
            n += 1;
        }
        anyhow::Ok(n)
    });
    let start = Instant::now();
    for i in 0..args.messages {
        let m = PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("{i:016X}:00000000"));
        let ack = js.send_publish("floor.db.public.t.insert", m).await?;
        if tx.send(ack).await.is_err() {
            bail!("the acknowledging task ended");
        }
    }
    drop(tx);
    let acked = acker.await??;
    let published = start.elapsed().as_secs_f64();
    let stream = js.get_stream(name).await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    let start = Instant::now();
    let mut read = 0u64;
    while read < args.messages {
        match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
            Ok(Some(m)) => {
                m?;
                read += 1;
            }
            _ => bail!("reading stopped after {read} messages"),
        }
    }
    let reading = start.elapsed().as_secs_f64();
    println!(
        "messages                {} of {} bytes",
        args.messages, args.size
    );
    println!(
        "published/s             {:.0} ({acked} acknowledged)",
        args.messages as f64 / published
    );
    println!(
        "read/s                  {:.0} (ordered consumer)",
        read as f64 / reading
    );
    js.delete_stream(name).await?;
    Ok(())
}
