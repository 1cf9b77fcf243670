/* fastnn's cost model: how much work makes a second thread pay. One definition for the
 * kernels (Cython cimports these) and the Python layer (fastnn._threads.SERIAL_BELOW,
 * read from fastnn_ext._runtime). Below a threshold a call runs on the calling thread.
 *
 * Waking a pool worker that still spins costs ~1 us, one that sleeps ~5-10 us, the join
 * another ~1 us. Each threshold is in its kind's own unit, measured on Zen 5 with
 * 2 threads as the size where 2 threads first beat 1:
 *   ELEMENTWISE  elements of a cheap pass (relu, leaky_relu and the backwards: a load or
 *                two, a select, a store): 2^16 (8.4 us serial vs 5.5 + 2 parallel).
 *   EXP          elements of an exp/tanh pass (sigmoid, tanh, softmax, cross-entropy
 *                rows): 2^14 (8.1 us serial vs 5.5 + 2).
 *   MAC          multiply-adds of a product-like kernel (banded, masked, locally
 *                connected): 2^15.
 *   GATE         units (rows x H) of a recurrent gate pass: five exp-based
 *                nonlinearities a unit, ~1.5 ns with AVX-512, so 16384 units ~25 us.
 *   RECURRENT    multiply-adds of one step's recurrent product: 2^20 (~30 us serial).
 *   POOL         input elements of a pooling pass: 2^17. Called back to back (the worker
 *                still spins) two threads won from 2^14 on (max_pool2d k2 N32 C8 8x8:
 *                11.7 us on one thread, 9.6 on two); with 100 us of other work between
 *                calls (the worker asleep: a training step) they lost up to 2^17 (13.0
 *                against 42.5 us at 2^14, 26.3 against 42.7 at 2^17, forward); the
 *                backward won from 2^19 (159 against 119 us), the forward from 2^21
 *                (182 against 148). 2^17 gives up at most ~5 us a call back to back
 *                for up to ~30 us kept in a training step.
 *   CONV         multiply-adds of a whole convolution call, forward or backward (every
 *                region of the call: padding, phases, products): 2^20. Two threads
 *                against one, 3x3 kernels, NCHW and NHWC, 147k-4.7M multiply-adds:
 *                called back to back (the worker still spins) two threads won 1.0-1.5x
 *                from 147k on; with 100 us of other work between calls (the worker
 *                asleep, as inside a framework's training step) they lost 0.36-0.9x
 *                up to 2.4M and broke even at 4.7M, since waking a sleeping worker
 *                costs 20-30 us on this VM. Below 2^20 the most two threads could win
 *                was ~10 us a call, the most they lost ~25 us. */
#ifndef FASTNN_COST_H
#define FASTNN_COST_H
#define FASTNN_SERIAL_BELOW_ELEMENTWISE 65536
#define FASTNN_SERIAL_BELOW_EXP 16384
#define FASTNN_SERIAL_BELOW_MAC 32768
#define FASTNN_SERIAL_BELOW_GATE 16384
#define FASTNN_SERIAL_BELOW_RECURRENT 1048576
#define FASTNN_SERIAL_BELOW_POOL 131072
#define FASTNN_SERIAL_BELOW_CONV 1048576
#endif
