/* threadpool.c: workers sleep on a condition variable between loops; tasks are claimed with an
 * atomic counter so uneven tasks balance themselves. */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

struct eng_threadpool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_cond_t done;
    unsigned long generation; /* bumped for every loop; guarded by mu */
    bool quit;
    /* current loop */
    eng_task_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next_task;
    int n_busy; /* workers still inside the current loop; guarded by mu */
};

typedef struct worker_arg {
    eng_threadpool *pool;
    int thread;
} worker_arg;

static void run_tasks(eng_threadpool *pool, int thread)
{
    for (;;) {
        int task = atomic_fetch_add(&pool->next_task, 1);
        if (task >= pool->n_tasks)
            break;
        pool->fn(pool->ctx, task, thread);
    }
}

static void *worker_main(void *p)
{
    worker_arg *arg = p;
    eng_threadpool *pool = arg->pool;
    int thread = arg->thread;
    free(arg);
    unsigned long seen = 0;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (!pool->quit && pool->generation == seen)
            pthread_cond_wait(&pool->wake, &pool->mu);
        if (pool->quit)
            break;
        seen = pool->generation;
        pthread_mutex_unlock(&pool->mu);
        run_tasks(pool, thread);
        pthread_mutex_lock(&pool->mu);
        if (--pool->n_busy == 0)
            pthread_cond_signal(&pool->done);
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

pp_status eng_threadpool_create(int n_threads, eng_threadpool **out, eng_err *err)
{
    *out = NULL;
    if (n_threads < 1)
        n_threads = 1;
    eng_threadpool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "threadpool: out of memory");
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    pool->threads = calloc((size_t)n_threads, sizeof *pool->threads);
    if (!pool->threads) {
        eng_threadpool_destroy(pool);
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "threadpool: out of memory");
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *arg = malloc(sizeof *arg);
        if (arg) {
            arg->pool = pool;
            arg->thread = i;
        }
        if (!arg || pthread_create(&pool->threads[i], NULL, worker_main, arg) != 0) {
            free(arg);
            pool->n_threads = i; /* join only those started */
            eng_threadpool_destroy(pool);
            return eng_fail(err, PP_STATUS_INTERNAL, "threadpool: cannot start thread %d", i);
        }
    }
    *out = pool;
    return PP_STATUS_OK;
}

void eng_threadpool_destroy(eng_threadpool *pool)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->mu);
    pool->quit = true;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i < pool->n_threads && pool->threads; i++)
        pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    pthread_mutex_destroy(&pool->mu);
    free(pool->threads);
    free(pool);
}

int eng_threadpool_size(const eng_threadpool *pool) { return pool ? pool->n_threads : 1; }

void eng_threadpool_run(eng_threadpool *pool, int n_tasks, eng_task_fn fn, void *ctx)
{
    if (n_tasks <= 0)
        return;
    if (pool->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++)
            fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&pool->mu);
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n_tasks = n_tasks;
    atomic_store(&pool->next_task, 0);
    pool->n_busy = pool->n_threads - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);

    run_tasks(pool, 0);

    pthread_mutex_lock(&pool->mu);
    while (pool->n_busy > 0)
        pthread_cond_wait(&pool->done, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
}
