//! Property test: random rows of every supported type; each value the plugin
//! writes must be byte-for-byte `SELECT to_json(col)::text` for that row.
//!
//! The seed is random per run and printed on failure; set `WALCAST_SEED` to
//! replay one.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::value::RawValue;
use std::collections::HashMap;
use walcast_tests::TestDb;

/// Column name, SQL type, generator of a random SQL text literal for the type.
type Gen = fn(&mut StdRng) -> String;

const SETUP: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'très "bien"');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN short_text AS text;
CREATE DOMAIN jdom AS jsonb;
CREATE TYPE pair AS (x int, label text, tags text[]);
CREATE TYPE mood2 AS ENUM ('low', 'high');
CREATE FUNCTION mood2_json(mood2) RETURNS json LANGUAGE sql IMMUTABLE
    AS $$ SELECT json_build_object('mood', $1::text, 'casted', true) $$;
CREATE CAST (mood2 AS json) WITH FUNCTION mood2_json(mood2);
"#;

fn columns() -> Vec<(&'static str, &'static str, Gen)> {
    vec![
        ("i2", "smallint", |r| r.random::<i16>().to_string()),
        ("i4", "integer", |r| pick_int(r).to_string()),
        ("i8", "bigint", |r| r.random::<i64>().to_string()),
        ("f4", "real", gen_f4),
        ("f8", "double precision", gen_f8),
        ("n", "numeric", gen_numeric),
        ("n2", "numeric(12,4)", |r| {
            format!(
                "{}.{:04}",
                r.random_range(-99_999_999i64..99_999_999),
                r.random_range(0..10_000)
            )
        }),
        ("b", "boolean", |r| r.random::<bool>().to_string()),
        ("t", "text", |r| gen_text(r, 40)),
        ("vc", "varchar(12)", |r| gen_text(r, 12)),
        ("c", "char(6)", |r| gen_ascii(r, 6)),
        ("nm", "name", |r| gen_ascii(r, 20)),
        ("j", "json", |r| gen_json(r, 3, true)),
        ("jb", "jsonb", |r| gen_json(r, 3, false)),
        ("u", "uuid", gen_uuid),
        ("d", "date", gen_date),
        ("ts", "timestamp", gen_timestamp),
        ("tstz", "timestamptz", gen_timestamp),
        ("tm", "time", |r| {
            format!(
                "{:02}:{:02}:{:02}.{:06}",
                r.random_range(0..24),
                r.random_range(0..60),
                r.random_range(0..60),
                r.random_range(0..1_000_000)
            )
        }),
        ("tmtz", "timetz", |r| {
            format!(
                "{:02}:{:02}:{:02}{:+03}:{:02}",
                r.random_range(0..24),
                r.random_range(0..60),
                r.random_range(0..60),
                r.random_range(-12..14),
                [0, 30, 45][r.random_range(0..3)]
            )
        }),
        ("iv", "interval", |r| {
            format!(
                "{} years {} mons {} days {} seconds",
                r.random_range(-50..50),
                r.random_range(-20..20),
                r.random_range(-400..400),
                r.random_range(-100_000.0..100_000.0f64)
            )
        }),
        ("by", "bytea", gen_bytea),
        ("ia", "integer[]", gen_int_array),
        ("ta", "text[]", gen_text_array),
        ("na", "numeric[]", |r| {
            format!("{{{},{},NULL}}", gen_numeric(r), gen_numeric(r))
        }),
        ("m", "mood", |r| {
            ["sad", "ok", "happy", "très \"bien\""][r.random_range(0..4)].to_owned()
        }),
        ("pi", "posint", |r| r.random_range(1..i32::MAX).to_string()),
        ("st", "short_text", |r| gen_text(r, 8)),
        ("jd", "jdom", |r| gen_json(r, 2, false)),
        ("p", "pair", gen_pair),
        ("r", "int4range", |r| {
            let a = r.random_range(-1000..1000);
            format!("[{a},{})", a + r.random_range(1..100))
        }),
        ("tr", "tstzrange", |r| {
            format!("[\"{}\",)", gen_timestamp_finite(r))
        }),
        ("ip", "inet", |r| {
            format!(
                "{}.{}.{}.{}/{}",
                r.random::<u8>(),
                r.random::<u8>(),
                r.random::<u8>(),
                r.random::<u8>(),
                r.random_range(8..33)
            )
        }),
        ("o", "oid", |r| r.random::<u32>().to_string()),
        ("mon", "money", |r| {
            format!(
                "{}.{:02}",
                r.random_range(-1_000_000i64..1_000_000),
                r.random_range(0..100)
            )
        }),
        ("bits", "bit varying(16)", |r| {
            (0..r.random_range(0..16))
                .map(|_| if r.random() { '1' } else { '0' })
                .collect()
        }),
        ("pt", "point", |r| {
            format!(
                "({},{})",
                r.random_range(-1e6..1e6f64),
                r.random_range(-1e6..1e6f64)
            )
        }),
        ("tsa", "timestamptz[]", |r| {
            format!("{{\"{}\",NULL}}", gen_timestamp_finite(r))
        }),
        ("ba", "boolean[]", |r| {
            format!("{{{},NULL}}", r.random::<bool>())
        }),
        ("ja", "jsonb[]", |r| {
            format!("{{{}}}", quote_array_elem(&gen_json(r, 1, false)))
        }),
    ]
}

fn pick_int(r: &mut StdRng) -> i32 {
    match r.random_range(0..4) {
        0 => i32::MIN,
        1 => i32::MAX,
        2 => 0,
        _ => r.random(),
    }
}

fn gen_f8(r: &mut StdRng) -> String {
    match r.random_range(0..12) {
        0 => "NaN".into(),
        1 => "Infinity".into(),
        2 => "-Infinity".into(),
        3 => "-0".into(),
        4 => format!("{:?}", f64::MIN_POSITIVE / 3.0),
        5 => format!("{:?}", r.random_range(-1e300..1e300f64)),
        6 => format!("{:?}", r.random_range(-1.0..1.0f64) * 1e-10),
        _ => format!(
            "{:?}",
            f64::from_bits(r.random::<u64>()).clamp(-1e308, 1e308)
        )
        .replace("NaN", "1.5"),
    }
}

fn gen_f4(r: &mut StdRng) -> String {
    match r.random_range(0..10) {
        0 => "NaN".into(),
        1 => "Infinity".into(),
        2 => "-Infinity".into(),
        3 => format!("{:?}", r.random_range(-1.0..1.0f32) * 3.0e38),
        4 => format!("{:?}", r.random_range(-1.0..1.0f32) * 1e-30),
        _ => format!("{:?}", r.random_range(-1e6..1e6f32)),
    }
}

fn gen_numeric(r: &mut StdRng) -> String {
    match r.random_range(0..10) {
        0 => "NaN".into(),
        1 => "Infinity".into(),
        2 => "-Infinity".into(),
        3 => "0.000000000000000000000000000001".into(),
        4 => format!("{}e{}", r.random_range(1..99999), r.random_range(-40..40)),
        _ => {
            let int: String = (0..r.random_range(1..30))
                .map(|_| char::from(b'0' + r.random_range(0..10)))
                .collect();
            let frac: String = (0..r.random_range(0..20))
                .map(|_| char::from(b'0' + r.random_range(0..10)))
                .collect();
            let sign = if r.random() { "-" } else { "" };
            if frac.is_empty() {
                format!("{sign}{int}")
            } else {
                format!("{sign}{int}.{frac}")
            }
        }
    }
}

fn gen_char(r: &mut StdRng) -> char {
    const SPECIAL: &[char] = &[
        '"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{1}', '\u{1f}', '\u{7f}', '/', '\'', 'é',
        '漢', '😀', '\u{2028}', '\u{feff}', ' ', ',', '{', '}', ':',
    ];
    match r.random_range(0..4) {
        0 => SPECIAL[r.random_range(0..SPECIAL.len())],
        1 => char::from_u32(r.random_range(0x20..0xD7FF)).unwrap_or('x'),
        _ => char::from(r.random_range(b' '..b'~')),
    }
}

fn gen_text(r: &mut StdRng, max: usize) -> String {
    (0..r.random_range(0..=max)).map(|_| gen_char(r)).collect()
}

fn gen_ascii(r: &mut StdRng, max: usize) -> String {
    (0..r.random_range(0..=max))
        .map(|_| char::from(r.random_range(b' '..b'~')))
        .collect()
}

fn json_string(r: &mut StdRng) -> String {
    let mut s = String::from("\"");
    for _ in 0..r.random_range(0..8) {
        match r.random_range(0..6) {
            0 => s.push_str("\\\""),
            1 => s.push_str("\\u00e9"),
            2 => s.push_str("\\n"),
            3 => s.push_str("\\\\"),
            _ => {
                let c = gen_char(r);
                if c == '"' || c == '\\' || (c as u32) < 0x20 {
                    s.push('x');
                } else {
                    s.push(c);
                }
            }
        }
    }
    s.push('"');
    s
}

fn gen_json(r: &mut StdRng, depth: u32, spaces: bool) -> String {
    let ws = |r: &mut StdRng| {
        if spaces && r.random_range(0..3) == 0 {
            " \n ".to_owned()
        } else {
            String::new()
        }
    };
    match if depth == 0 {
        r.random_range(0..4)
    } else {
        r.random_range(0..6)
    } {
        0 => ["null", "true", "false"][r.random_range(0..3)].to_owned(),
        1 => format!("{}", r.random_range(-1e6..1e6f64)),
        2 => ["0", "-1", "1.50", "1e10", "2.5E-3", "12345678901234567890"][r.random_range(0..6)]
            .to_owned(),
        3 => json_string(r),
        4 => {
            let items: Vec<String> = (0..r.random_range(0..4))
                .map(|_| gen_json(r, depth - 1, spaces))
                .collect();
            format!("[{}{}]", ws(r), items.join(&format!(",{}", ws(r))))
        }
        _ => {
            let items: Vec<String> = (0..r.random_range(0..4))
                .map(|_| {
                    format!(
                        "{}{}:{}{}",
                        json_string(r),
                        ws(r),
                        ws(r),
                        gen_json(r, depth - 1, spaces)
                    )
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
    }
}

fn gen_uuid(r: &mut StdRng) -> String {
    let b: [u8; 16] = r.random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn gen_date(r: &mut StdRng) -> String {
    match r.random_range(0..10) {
        0 => "infinity".into(),
        1 => "-infinity".into(),
        2 => format!(
            "{:04}-{:02}-{:02} BC",
            r.random_range(1..4000),
            r.random_range(1..13),
            r.random_range(1..29)
        ),
        _ => format!(
            "{:04}-{:02}-{:02}",
            r.random_range(1..10000),
            r.random_range(1..13),
            r.random_range(1..29)
        ),
    }
}

fn gen_timestamp_finite(r: &mut StdRng) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}{}",
        r.random_range(1..10000),
        r.random_range(1..13),
        r.random_range(1..29),
        r.random_range(0..24),
        r.random_range(0..60),
        r.random_range(0..60),
        r.random_range(0..1_000_000),
        ["", "+02", "-05:30", "+00"][r.random_range(0..4)]
    )
}

fn gen_timestamp(r: &mut StdRng) -> String {
    match r.random_range(0..10) {
        0 => "infinity".into(),
        1 => "-infinity".into(),
        2 => format!("{:04}-06-01 12:00:00 BC", r.random_range(1..4000)),
        _ => gen_timestamp_finite(r),
    }
}

fn gen_bytea(r: &mut StdRng) -> String {
    let n = r.random_range(0..40);
    let h: String = (0..n)
        .map(|_| format!("{:02x}", r.random::<u8>()))
        .collect();
    format!("\\x{h}")
}

fn gen_int_array(r: &mut StdRng) -> String {
    match r.random_range(0..4) {
        0 => "{}".into(),
        1 => {
            let (a, b) = (r.random_range(1..4), r.random_range(1..4));
            let rows: Vec<String> = (0..a)
                .map(|_| {
                    format!(
                        "{{{}}}",
                        (0..b)
                            .map(|_| if r.random_range(0..5) == 0 {
                                "NULL".to_owned()
                            } else {
                                pick_int(r).to_string()
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                })
                .collect();
            format!("{{{}}}", rows.join(","))
        }
        2 => format!("[2:3]={{{},{}}}", pick_int(r), pick_int(r)),
        _ => format!(
            "{{{}}}",
            (0..r.random_range(1..6))
                .map(|_| if r.random_range(0..5) == 0 {
                    "NULL".to_owned()
                } else {
                    pick_int(r).to_string()
                })
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

fn quote_array_elem(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn gen_text_array(r: &mut StdRng) -> String {
    let items: Vec<String> = (0..r.random_range(0..5))
        .map(|_| {
            if r.random_range(0..6) == 0 {
                "NULL".to_owned()
            } else {
                quote_array_elem(&gen_text(r, 10))
            }
        })
        .collect();
    format!("{{{}}}", items.join(","))
}

fn gen_pair(r: &mut StdRng) -> String {
    let label = gen_text(r, 8).replace('"', "\"\"").replace('\\', "\\\\");
    let tags = gen_text_array(r).replace('"', "\"\"").replace('\\', "\\\\");
    format!("({},\"{}\",\"{}\")", pick_int(r), label, tags)
}

#[derive(serde::Deserialize)]
struct Row<'a> {
    #[serde(borrow)]
    columns: HashMap<String, &'a RawValue>,
}

fn check_values_equal_to_json(session_settings: &str, rows: usize) {
    let seed: u64 = std::env::var("WALCAST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let cols = columns();
    let mut db = TestDb::new("values");
    db.exec(SETUP);
    let defs: Vec<String> = cols.iter().map(|(n, t, _)| format!("{n} {t}")).collect();
    db.exec(&format!(
        "CREATE TABLE v (id int PRIMARY KEY, {})",
        defs.join(", ")
    ));
    let slot = db.slot("values");
    db.exec(session_settings);

    let placeholders: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, (_, t, _))| format!("${}::text::{t}", i + 2))
        .collect();
    let insert = format!("INSERT INTO v VALUES ($1, {})", placeholders.join(", "));
    let mut tx = db.client.transaction().expect("begin");
    let stmt = tx.prepare(&insert).expect("prepare insert");
    for id in 0..rows as i32 {
        let values: Vec<Option<String>> = cols
            .iter()
            .map(|(_, _, g)| {
                if rng.random_range(0..10) == 0 {
                    None
                } else {
                    Some(g(&mut rng))
                }
            })
            .collect();
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&id];
        for v in &values {
            params.push(v);
        }
        if let Err(e) = tx.execute(&stmt, &params) {
            panic!("seed {seed}: inserting {values:?}: {e:?}");
        }
    }
    tx.commit().expect("commit");

    let changes = db.changes(&slot, &[("actions", "insert")]);
    assert_eq!(
        changes.len(),
        rows,
        "seed {seed}: one change per inserted row"
    );
    let exprs: Vec<String> = cols
        .iter()
        .map(|(n, _, _)| format!("to_json({n})::text"))
        .collect();
    let select = format!("SELECT {} FROM v WHERE id = $1", exprs.join(", "));
    let stmt = db.client.prepare(&select).expect("prepare select");
    let mut checked = 0;
    for (id, line) in changes.iter().enumerate() {
        let row: Row = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("seed {seed}: not JSON ({e}): {line}"));
        let expected = db
            .client
            .query_one(&stmt, &[&(id as i32)])
            .expect("select to_json");
        assert_eq!(
            row.columns.get("id").map(|v| v.get()),
            Some(id.to_string().as_str()),
            "seed {seed}: row order"
        );
        for (i, (name, ty, _)) in cols.iter().enumerate() {
            let want: Option<String> = expected.get(i);
            let want = want.unwrap_or_else(|| "null".to_owned());
            let got = row
                .columns
                .get(*name)
                .map(|v| v.get())
                .unwrap_or("<missing>");
            assert_eq!(
                got, want,
                "seed {seed}: column {name} ({ty}) of row {id} differs from to_json\nline: {line}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, rows * cols.len());
}

#[test]
fn every_value_equals_to_json_with_default_settings() {
    check_values_equal_to_json("SELECT 1", 400);
}

#[test]
fn every_value_equals_to_json_under_other_session_settings() {
    // The plugin formats values in the decoding session, as to_json does.
    check_values_equal_to_json(
        "SET TimeZone = 'America/New_York'; SET bytea_output = 'escape'; SET extra_float_digits = 0; \
         SET IntervalStyle = 'sql_standard'; SET DateStyle = 'SQL, DMY'",
        200,
    );
}
