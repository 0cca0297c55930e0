# Implementing Diffusion Models: every figure of the post, the post, and its Jekyll site, from config.yaml.
#   snakemake --cores 1            build everything (the profile in profiles/default is picked up)
#   snakemake -n                   what would rerun, and why
#   snakemake --cores 1 figures    figures only;  snakemake --cores 1 post   figures + the markdown post
#   snakemake --cores 1 data / train   the trained backend's data set / training run (GPU; not in the default target)
#   snakemake --cores 1 verify     rebuild the figures in a scratch folder, compare with the published ones (not default)
#   snakemake --cores 1 rulegraph  docs/rulegraph.svg, the picture of the rules in the README (not default)
from snakemake.utils import min_version

min_version("9.0")

import signal

from diffusion_post import interrupt
from diffusion_post.project import freeze_at_exit, remove_stale_locks

# Ctrl-C also stops a sampling job in its worker thread at the next step (force-use-threads runs jobs in threads).
interrupt.install()

# A run killed with SIGKILL leaves its locks: without another Snakemake working here, they are stale.
remove_stale_locks()

# Exit without the last garbage collection (~0.45 s a run): the process ends, nothing needs collecting.
freeze_at_exit()


onstart:
    # Snakemake's job rate limit (--max-jobs-per-timespan, default 100/1s, for cluster submissions) starts a
    # 1-s timer that wakes the scheduler at every scheduling pass, and each wake starts another: after N jobs
    # the scheduler runs ~N passes a second (1,116 in one full build, 121 without), each checking the inputs of
    # every ready job. Jobs that run here need no rate limit: without it the scheduler wakes when a job ends.
    if workflow.local_exec and hasattr(workflow.scheduler, "job_rate_limiter"):
        workflow.scheduler.job_rate_limiter = None
    # The scheduler has set its SIGTERM handler (a graceful stop): a kill also stops the sampling jobs at their next
    # step, as Ctrl-C does, and tells the preview, which runs this Snakemake in its own process, to stop too.
    interrupt.install(signal.SIGTERM)

# config.yaml read strictly first (duplicate keys, YAML syntax errors with line and column), one line on error.
from diffusion_post.config import ConfigError, load_yaml

try:
    for path in ["config.yaml", *workflow.overwrite_configfiles]:
        load_yaml(path)
except ConfigError as error:
    sys.exit(f"Error: {error}")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/sampling.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/post.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/provenance.smk"


# On a cluster only the sampling jobs are submitted; layout, post and site are cheap and run where Snakemake runs.
localrules:
    all,
    figures,
    input_image,
    figure,
    figure_panel,
    animation,
    denoising_metrics,
    post,
    mathjax,
    site,
    emojibase,
    data,
    verify,
    rulegraph,


# Every figure and result is a target itself, not only an input of the site: Snakemake does not remake a missing
# intermediate file whose consumers are up to date, so a deleted figure (or its published copy) would otherwise stay
# deleted.
rule all:
    """The whole post: figures, markdown, and the built Jekyll site."""
    default_target: True
    input:
        rules.site.output,
        figure_files(),
        result_files(),
        rules.site.input.published,


rule figures:
    """Every figure of the post, and the frames of its interactive figures."""
    input:
        figure_files(),
        result_files(),
        frame_files(),
