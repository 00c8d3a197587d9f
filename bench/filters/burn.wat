;; A filter that uses nearly all the fuel allowed for one event on every
;; change, then drops it: the most CPU a filter can take without failing.
;; Used by walcast-hostile (docs/benchmarks.md, "Hostile clients").
(module
  (memory (export "memory") 1)
  (func (export "walcast_abi_v1"))
  ;; Records without the JSON: the loop is the cost.
  (func (export "walcast_header_only"))
  (func (export "walcast_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "walcast_filter") (param i32 i32) (result i32)
    (local $n i32)
    (local.set $n (i32.const 30000))
    (loop $spin
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $spin (local.get $n)))
    ;; 0: drop the change.
    i32.const 0))
