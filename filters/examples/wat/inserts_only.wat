;; A walcast filter written by hand in WebAssembly text, without the SDK:
;; it keeps inserts and drops everything else, reading only the action byte
;; of the record header (offset 1). See filters/README.md for the ABI.
(module
  ;; One 64 KiB page to start; walcast_alloc grows it for large events.
  (memory (export "memory") 1)

  ;; The ABI marker: this module speaks walcast ABI version 1.
  (func (export "walcast_abi_v1"))

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
)
