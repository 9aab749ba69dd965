"""The eval room: lm-eval on a checkpoint, results into the run directory.

Modules, in dependency order (each imports only those above it, plus config / toy / runs / paths):

- ``isolation`` the bubblewrap command line (namespaces, read-only view, seccomp) of the sandbox's OS layer;
- ``sandbox``   run untrusted model-written code isolated (bwrap) or guarded, limited; the layer choice;
- ``code_tasks`` the ``*_sandboxed`` lm-eval code tasks rendered for the installed lm-eval (``@code``);
- ``vllm_cpu``  in-process accommodations for vLLM's CPU build;
- ``backends``  hf / vllm: discovery, resolution, the interpreter to use, model args, the lazy lm-eval model;
- ``cache``     the evaluation cache, keyed by content hashes of the checkpoint and of the lm-eval tasks;
- ``task_index`` lm-eval's task index kept on disk (a TaskManager without re-reading ~14,000 YAMLs);
- ``entries``   suite entries as lm-eval sees them: task managers, pre-load checks, cache keys;
- ``results``   primary metric, Avg@k statistics, the per-entry record, ``results.json``;
- ``runner``    :func:`~harness.eval.runner.evaluate_suites`, the driver;
- ``request``   what ``otr-harness eval`` asks the evaluation process to do.

Importing the package loads nothing: import the module you need.
"""
