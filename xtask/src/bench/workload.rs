//! The example functions `cargo xtask bench` runs, from the most I/O-bound to the most
//! compute-bound, each with its input (generated from fixed seeds, the same bytes on every run)
//! and its event. Every handler is written for the real boto3 and reports the guest's memory.
//!
//! ```text
//!  function   handler (guest/python/examples/…)   input                   work
//!  copy       bench/copy_object.py                2 MiB of random bytes   get, put unchanged
//!  compress   bench/handler.py                    256 KiB of text         get, gzip, put
//!  transform  bench/transform.py                  1 500 orders, JSON      get, parse, total, put
//!  thumbnail  thumbnail/handler.py                12-megapixel JPEG       get, decode, shrink, put
//! ```

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::stack::{Stack, BUCKET};
use super::vm;

/// The example functions the benchmark can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Function {
    /// Only moves data: reads a 2 MiB object and writes it unchanged under another key.
    Copy,
    /// Mostly moves data: reads a 256 KiB text object, gzips it, writes the result.
    Compress,
    /// Parses and totals 1 500 JSON orders, writes the totals and one line per item.
    Transform,
    /// Computes on its input: reads a 12-megapixel JPEG, makes a 128×128 thumbnail with
    /// Pillow, writes it.
    Thumbnail,
}

/// The inputs of copy, transform and thumbnail (compress's is `vm::INPUT_KEY`).
const PARTITION_KEY: &str = "in/partition.bin";
const PARTITION_BYTES: usize = 2 << 20;
const ORDERS_KEY: &str = "in/orders.json";
const ORDERS: usize = 1500;
const PHOTO_KEY: &str = "in/photo.jpg";
/// The photo's size and the seed of what is drawn on it.
const PHOTO: (u32, u32, u64) = (4032, 3024, 1);

impl Function {
    pub fn name(self) -> &'static str {
        match self {
            Function::Copy => "copy",
            Function::Compress => "compress",
            Function::Transform => "transform",
            Function::Thumbnail => "thumbnail",
        }
    }

    /// The code folder, under the workspace.
    pub fn code(self) -> &'static str {
        match self {
            Function::Thumbnail => "guest/python/examples/thumbnail",
            _ => vm::CODE,
        }
    }

    pub fn handler(self) -> &'static str {
        match self {
            Function::Copy => "copy_object.py:handler",
            Function::Compress => vm::HANDLER,
            Function::Transform => "transform.py:handler",
            Function::Thumbnail => "handler.py:handler",
        }
    }

    pub fn input_key(self) -> &'static str {
        match self {
            Function::Copy => PARTITION_KEY,
            Function::Compress => vm::INPUT_KEY,
            Function::Transform => ORDERS_KEY,
            Function::Thumbnail => PHOTO_KEY,
        }
    }

    /// The event of invocation `seq` of the function deployed as `name`.
    pub fn event(self, name: &str, seq: &str) -> Value {
        let suffix = match self {
            Function::Copy => "bin",
            Function::Compress => "gz",
            Function::Transform => "jsonl",
            Function::Thumbnail => "jpg",
        };
        json!({
            "bucket": BUCKET, "key": self.input_key(), "output_key": format!("out/{name}-{seq}.{suffix}"),
        })
    }

    /// Puts the function's input into the bucket.
    pub fn seed(self, stack: &Stack, python: &Path) -> Result<()> {
        let script = match self {
            Function::Compress => return vm::seed_input(stack, python),
            Function::Copy => format!(
                "import random\n\
                 body = random.Random(1).randbytes({PARTITION_BYTES})\n\
                 s3.put_object(Bucket='{BUCKET}', Key='{PARTITION_KEY}', Body=body)\n"
            ),
            Function::Transform => format!(
                r#"import json, random
rng = random.Random(1)
countries = ['DE', 'FR', 'US', 'JP', 'BR', 'IN', 'NG', 'AU']
orders = [{{
    'id': i, 'country': rng.choice(countries),
    'status': rng.choice(['paid', 'paid', 'paid', 'refunded', 'pending']),
    'items': [{{'sku': 'sku-%03d' % rng.randrange(500), 'qty': rng.randrange(1, 5),
                'price': round(rng.uniform(1, 200), 2)}} for _ in range(rng.randrange(1, 6))],
}} for i in range({ORDERS})]
s3.put_object(Bucket='{BUCKET}', Key='{ORDERS_KEY}', Body=json.dumps(orders).encode())
"#
            ),
            Function::Thumbnail => {
                let (w, h, seed) = PHOTO;
                // Colour ramps and a few hundred discs: a photo-sized JPEG that compresses like
                // one (≈ 0.7 MB).
                format!(
                    r#"import io, random
from PIL import Image, ImageDraw
rng = random.Random({seed})
w, h = {w}, {h}
ramp = Image.linear_gradient('L')
image = Image.merge('RGB', [ramp.resize((w, h)), Image.radial_gradient('L').resize((w, h)), ramp.rotate(90).resize((w, h))])
draw = ImageDraw.Draw(image)
for _ in range(400):
    x, y, r = rng.randrange(w), rng.randrange(h), rng.randrange(16, 320)
    draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
out = io.BytesIO()
image.save(out, 'JPEG', quality=90)
s3.put_object(Bucket='{BUCKET}', Key='{PHOTO_KEY}', Body=out.getvalue(), ContentType='image/jpeg')
"#
                )
            }
        };
        stack.seed(python, &script)
    }
}
