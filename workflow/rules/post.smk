# The markdown post (Jinja templates) and the Jekyll site.
from diffusion_post import site

from diffusion_post.site import MATHJAX_VERSION, mathjax_stamp  # torch-free

POST = f"site/_posts/{config['post']['date']}-implementing-diffusion-models.md"
TEMPLATES = sorted(str(p) for p in Path("templates").rglob("*.j2"))
SITE_SOURCES = site.source_files("site")  # layouts, CSS, scripts, pages, _config.yml: not what the build writes there


rule post:
    """The post: templates rendered with every figure's parameters and the denoising metrics; under each figure, how
    it was made (its record and the seconds its job took)."""
    input:
        figures=figure_files(),
        frames=frame_files(),
        metrics="results/denoising_metrics.json" if "metrics" in config["post"] else [],
        seconds=seconds_files(),
        templates=TEMPLATES,
        code=code("post.py", "png.py", "figures.py", "schedule.py", "config.py", "provenance.py"),
    output:
        POST,
    params:
        specs=SPECS,
        post=config["post"],
        inputs=config["inputs"],
    run:
        from diffusion_post import post

        post.render(config, params.specs, input.figures, input.metrics or None, "templates", output[0],
                    frames=FRAMES, seconds=input.seconds)


rule mathjax:
    """MathJax 4 and its font, served by the site itself (from the npm registry, once)."""
    output:
        f"site/assets/mathjax/{mathjax_stamp()}",  # named by the version: a site holding MathJax 3 installs again
    run:
        from diffusion_post import site

        site.install_mathjax("site", version=MATHJAX_VERSION)


rule site:
    """The Jekyll site in site/_site: `jekyll build` (its baseurl, for a site served under /REPO/, is set in
    site/_config.yml) of the post, the site's sources and the figures the layout jobs published to
    site/assets/figures (a deleted copy is published again by its layout job), after removing from there what the
    post no longer shows."""
    input:
        post=POST,
        published=[published(f) for f in figure_files() + frame_files()],
        mathjax=f"site/assets/mathjax/{mathjax_stamp()}",
        sources=SITE_SOURCES,
        code=code("site.py"),
    output:
        html="site/_site/index.html",
    run:
        from diffusion_post import site

        site.remove_unpublished("site/assets/figures", input.published)
        site.build_site("site")
