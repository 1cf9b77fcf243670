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
 *   POOL         input elements of a pooling pass: 2^14 (a region costs a few us, about
 *                what 2-3 thousand elements of pooling take). */
#ifndef FASTNN_COST_H
#define FASTNN_COST_H
#define FASTNN_SERIAL_BELOW_ELEMENTWISE 65536
#define FASTNN_SERIAL_BELOW_EXP 16384
#define FASTNN_SERIAL_BELOW_MAC 32768
#define FASTNN_SERIAL_BELOW_GATE 16384
#define FASTNN_SERIAL_BELOW_RECURRENT 1048576
#define FASTNN_SERIAL_BELOW_POOL 16384
#endif
