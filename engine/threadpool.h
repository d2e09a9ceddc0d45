/* threadpool.h: a fixed set of pthreads that run the tasks of one parallel loop at a time.
 *
 * Invariant: eng_threadpool_run returns only after every task has finished; the calling thread
 * takes part, so a pool of n threads has n - 1 workers.
 */
#ifndef ENG_THREADPOOL_H
#define ENG_THREADPOOL_H

#include "common.h"

typedef struct eng_threadpool eng_threadpool;

/* fn(ctx, task, thread): task in [0, n_tasks), thread in [0, n_threads) identifies the running
 * thread (for per-thread scratch). */
typedef void (*eng_task_fn)(void *ctx, int task, int thread);

pp_status eng_threadpool_create(int n_threads, eng_threadpool **out, eng_err *err);
void eng_threadpool_destroy(eng_threadpool *pool); /* NULL-safe; joins the workers */
int eng_threadpool_size(const eng_threadpool *pool);
/* Runs fn for every task; not reentrant (one loop at a time per pool). */
void eng_threadpool_run(eng_threadpool *pool, int n_tasks, eng_task_fn fn, void *ctx);

#endif /* ENG_THREADPOOL_H */
