;; A walcast filter written by hand in WebAssembly text, without the SDK:
;; it keeps inserts and drops everything else, reading only the action byte
;; of the record header (offset 1). See filters/README.md for the ABI.
(module
  ;; One 64 KiB page to start; walcast_alloc grows it for large events.
  (memory (export "memory") 1)

  ;; The ABI marker: this module speaks walcast ABI version 1.
  (func (export "walcast_abi_v1"))

  ;; Another marker: it reads only the header, schema and table, so the
  ;; host leaves the JSON out of its records.
  (func (export "walcast_header_only"))

  ;; The host asks for a buffer of $len bytes: use the memory from offset
  ;; 1024 on, growing it when the event does not fit. 0 refuses.
  (func (export "walcast_alloc") (param $len i32) (result i32)
    (local $need i32)
    ;; pages needed for 1024 + len bytes
    (local.set $need
      (i32.shr_u (i32.add (i32.add (local.get $len) (i32.const 1024)) (i32.const 65535))
                 (i32.const 16)))
    (if (i32.gt_u (local.get $need) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $need) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    (i32.const 1024))

  ;; 1 (keep) for an insert (action 1), 0 (drop) otherwise.
  (func (export "walcast_filter") (param $ptr i32) (param $len i32) (result i32)
    (i32.eq (i32.load8_u offset=1 (local.get $ptr)) (i32.const 1)))

  ;; Optional: $count records in one call, each at an 8-byte aligned offset
  ;; from $ptr; the verdict for record i goes to the 12-byte decision cell at
  ;; $out + 12 * i (code; output address and length, used for code 2 only).
  ;; Returns how many verdicts it wrote.
  (func (export "walcast_filter_batch")
        (param $ptr i32) (param $count i32) (param $out i32) (result i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (i32.store (local.get $out)
          (i32.eq (i32.load8_u offset=1 (local.get $ptr)) (i32.const 1)))
        ;; the next record: after this one's JSON (offset + length at
        ;; header offsets 24 and 28), rounded up to 8
        (local.set $ptr
          (i32.add (local.get $ptr)
            (i32.and
              (i32.add (i32.add (i32.load offset=24 (local.get $ptr))
                                (i32.load offset=28 (local.get $ptr)))
                       (i32.const 7))
              (i32.const -8))))
        (local.set $out (i32.add (local.get $out) (i32.const 12)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $count))
)
