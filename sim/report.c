/*
 * report.c — what a run prints: one JSON object (--json) or a short summary, the time series
 * (--csv: t_ms, coverage, bytes, messages, nodes_online) and a coverage-over-time plot (--svg),
 * and `plot`, which overlays the curves of several CSV files in one SVG.
 */
#include "sim/sim_int.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>

static const char *topo_name(fm_sim_topology t)
{
    static const char *names[] = {"full", "line", "ring", "grid", "random", "rgg"};
    return (size_t)t < FM_ARRAY_LEN(names) ? names[t] : "?";
}

void fm_sim_print_json(const fm_sim *s, const fm_sim_result *r, FILE *f)
{
    const fm_sim_config *c = &s->cfg;
    char trace[2 * FM_HASH_BYTES + 1];
    fm_hex(r->trace, FM_HASH_BYTES, trace);
    double per_op = r->ops ? (double)r->bytes / r->ops : 0;
    fprintf(f,
            "{\"nodes\":%" PRIu32 ",\"seed\":%" PRIu64 ",\"topology\":\"%s\",\"degree\":%" PRIu32
            ",\"mean_degree\":%.2f,\"link\":\"%s\",\"loss\":%.4f,\"churn\":%.3f,\"crash\":%.3f",
            c->nodes, c->seed, topo_name(c->topology), c->degree, sim_mean_degree(s), c->link.name,
            s->loss, c->churn, c->crash);
    fprintf(f, ",\"converged\":%s,\"convergence_ms\":", r->converged ? "true" : "false");
    if (r->convergence_ms == UINT64_MAX)
        fprintf(f, "null");
    else
        fprintf(f, "%" PRIu64, r->convergence_ms);
    fprintf(f,
            ",\"end_ms\":%" PRIu64 ",\"last_write_ms\":%" PRIu64 ",\"settle_ms\":%" PRIu64
            ",\"messages\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"bytes_per_op\":%.1f"
            ",\"bytes_per_op_per_node\":%.1f,\"ops\":%" PRIu64 ",\"writes_acked\":%" PRIu64
            ",\"writes_failed\":%" PRIu64 ",\"expected_refused\":%" PRIu64
            ",\"lost_writes\":%" PRIu64 ",\"refused_spread\":%" PRIu64,
            r->end_ms, r->last_write_ms, r->settle_ms, r->messages, r->bytes, per_op,
            c->nodes ? per_op / c->nodes : 0, r->ops, r->writes_acked, r->writes_failed,
            r->expected_refused, r->lost_writes, r->refused_spread);
    fprintf(f,
            ",\"distinct_state_hashes\":%" PRIu32 ",\"components\":%" PRIu32
            ",\"checked_nodes\":%" PRIu32 ",\"min_ops\":%" PRIu64 ",\"max_ops\":%" PRIu64
            ",\"conflicts_min\":%" PRIu64 ",\"conflicts_max\":%" PRIu64 ",\"forked_min\":%" PRIu64
            ",\"forked_max\":%" PRIu64 ",\"coverage\":%.6f",
            r->distinct_state_hashes, r->components, r->checked_nodes, r->min_ops, r->max_ops,
            r->conflicts_min, r->conflicts_max, r->forked_min, r->forked_max, r->coverage);
    fprintf(f,
            ",\"sessions_ok\":%" PRIu64 ",\"sessions_failed\":%" PRIu64 ",\"conns_opened\":%" PRIu64
            ",\"connects_failed\":%" PRIu64 ",\"batches_in\":%" PRIu64 ",\"batches_out\":%" PRIu64
            ",\"batches_dup\":%" PRIu64 ",\"batches_refused\":%" PRIu64 ",\"ihave\":%" PRIu64
            ",\"prunes\":%" PRIu64 ",\"grafts\":%" PRIu64 ",\"covered\":%" PRIu64
            ",\"vectors_deferred\":%" PRIu64 ",\"frames\":%" PRIu64 ",\"segments\":%" PRIu64
            ",\"retransmits\":%" PRIu64 ",\"events\":%" PRIu64 ",\"node_calls\":%" PRIu64
            ",\"crashes\":%" PRIu64 ",\"wall_ms\":%" PRIu64 ",\"setup_wall_ms\":%" PRIu64
            ",\"threads\":%" PRIu32 ",\"windows\":%" PRIu64 ",\"wait_ms\":%" PRIu64
            ",\"trace_hash\":\"%s\"}\n",
            r->sessions_ok, r->sessions_failed, r->conns_opened, r->connects_failed, r->batches_in,
            r->batches_out, r->batches_dup, r->batches_refused, r->ihave, r->prunes, r->grafts,
            r->covered, r->deferred, r->frames, r->segments, r->retransmits, r->events,
            r->node_calls, r->crashes, r->wall_ms, r->setup_wall_ms, r->threads, r->windows,
            r->wait_ms, trace);
}

void fm_sim_print_summary(const fm_sim *s, const fm_sim_result *r, FILE *f)
{
    char trace[2 * FM_HASH_BYTES + 1];
    fm_hex(r->trace, FM_HASH_BYTES, trace);
    fprintf(f, "fieldmesh-sim: %" PRIu32 " nodes, %s, %s link, seed %" PRIu64 "\n", s->cfg.nodes,
            topo_name(s->cfg.topology), s->cfg.link.name, s->cfg.seed);
    if (r->converged)
        fprintf(f, "  converged %" PRIu64 " ms after the last write (t=%.3f s)\n",
                r->convergence_ms, r->end_ms / 1e3);
    else
        fprintf(f, "  NOT converged by t=%.3f s (%" PRIu32 " distinct state hashes)\n",
                r->end_ms / 1e3, r->distinct_state_hashes);
    fprintf(f,
            "  writes: %" PRIu64 " acknowledged, %" PRIu64 " lost, %" PRIu64
            " refused as expected\n",
            r->writes_acked, r->lost_writes, r->expected_refused);
    fprintf(f,
            "  traffic: %" PRIu64 " messages, %" PRIu64 " bytes (%.0f bytes/op), %" PRIu64
            " sessions\n",
            r->messages, r->bytes, r->ops ? (double)r->bytes / r->ops : 0, r->sessions_ok);
    fprintf(f, "  components %" PRIu32 ", coverage %.4f, wall %" PRIu64 " ms (setup %" PRIu64 ")\n",
            r->components, r->coverage, r->wall_ms, r->setup_wall_ms);
    if (r->windows)
        fprintf(f,
                "  %" PRIu32 " threads, %" PRIu64 " windows, %" PRIu64
                " ms waiting for the slowest (%.1f %% of their time)\n",
                r->threads, r->windows, r->wait_ms,
                r->wall_ms ? 100.0 * r->wait_ms / ((double)r->threads * r->wall_ms) : 0);
    fprintf(f, "  trace %s\n", trace);
}

/* ---- time series ------------------------------------------------------------------------------
 */

int fm_sim_write_csv(const fm_sim *s, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return FM_EIO;
    fprintf(
        f, "# fieldmesh-sim nodes=%" PRIu32 " seed=%" PRIu64 " last_write_ms=%" PRIu64 " args=%s\n",
        s->cfg.nodes, s->cfg.seed, s->last_write_us / 1000, s->cfg.args);
    fprintf(f, "t_ms,coverage,bytes,messages,nodes_online\n");
    for (uint32_t i = 0; i < s->nsamples; i++) {
        const sim_sample *x = &s->samples[i];
        fprintf(f, "%" PRIu64 ",%.6f,%" PRIu64 ",%" PRIu64 ",%" PRIu32 "\n", x->t_ms, x->coverage,
                x->bytes, x->messages, x->online);
    }
    return fclose(f) == 0 ? 0 : FM_EIO;
}

/* ---- SVG ----------------------------------------------------------------------------------------
 */

typedef struct series {
    char label[96];
    double *t, *y; /* seconds, fraction */
    size_t n, cap;
    double last_write_s; /* < 0: unknown */
} series;

static int series_add(series *z, double t, double y)
{
    if (z->n == z->cap) {
        size_t c = z->cap ? z->cap * 2 : 256;
        double *a = fm_reallocarray(z->t, c, sizeof *a);
        if (!a)
            return FM_ENOMEM;
        z->t = a;
        double *b = fm_reallocarray(z->y, c, sizeof *b);
        if (!b)
            return FM_ENOMEM;
        z->y = b;
        z->cap = c;
    }
    z->t[z->n] = t;
    z->y[z->n] = y;
    z->n++;
    return 0;
}

static double nice_step(double span, int ticks)
{
    double raw = span / ticks, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

static const char *COLORS[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                               "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else if (*s == '"')
            fputs("&quot;", f);
        else
            fputc(*s, f);
    }
}

static int plot_svg(const char *path, const series *z, size_t n, const char *title)
{
    const double W = 900, H = 520, L = 80, R = 30, T = 50, B = 70;
    double tmax = 0;
    for (size_t k = 0; k < n; k++)
        for (size_t i = 0; i < z[k].n; i++)
            tmax = FM_MAX(tmax, z[k].t[i]);
    if (tmax <= 0)
        tmax = 1;
    double xstep = nice_step(tmax, 8);
    tmax = ceil(tmax / xstep) * xstep;
    FILE *f = fopen(path, "w");
    if (!f)
        return FM_EIO;
    double pw = W - L - R, ph = H - T - B;
#define X(t) (L + (t) / tmax * pw)
#define Y(v) (T + (1 - (v)) * ph)
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"13\">\n",
            W, H, W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%.0f\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">", W / 2);
    xml_text(f, title);
    fprintf(f, "</text>\n");
    /* grid and ticks */
    for (int i = 0; i <= 10; i++) {
        double v = i / 10.0;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>\n",
                L, Y(v), L + pw, Y(v));
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%d%%</text>\n", L - 8, Y(v) + 4,
                i * 10);
    }
    for (double t = 0; t <= tmax + xstep / 2; t += xstep) {
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>\n",
                X(t), T, X(t), T + ph);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n", X(t),
                T + ph + 20, t);
    }
    fprintf(f,
            "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
            "stroke=\"black\"/>\n",
            L, T, pw, ph);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">virtual time (s)</text>\n",
            L + pw / 2, H - 22);
    fprintf(f,
            "<text transform=\"translate(22 %.1f) rotate(-90)\" text-anchor=\"middle\">"
            "coverage: acknowledged writes delivered (%% of node x write pairs)</text>\n",
            T + ph / 2);
    for (size_t k = 0; k < n; k++) {
        const char *col = COLORS[k % FM_ARRAY_LEN(COLORS)];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
        for (size_t i = 0; i < z[k].n; i++)
            fprintf(f, "%.1f,%.1f ", X(z[k].t[i]), Y(FM_MIN(1.0, FM_MAX(0.0, z[k].y[i]))));
        fprintf(f, "\"/>\n");
        if (z[k].last_write_s >= 0) {
            double x = X(z[k].last_write_s);
            fprintf(f,
                    "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                    "stroke-dasharray=\"5,4\"/>\n",
                    x, T, x, T + ph, col);
            fprintf(f,
                    "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\" font-size=\"11\">last write</text>\n",
                    x + 4, T + 14 + 14 * (double)k, col);
        }
        /* legend */
        double ly = T + ph - 16 - 20 * (double)(n - 1 - k);
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                "stroke-width=\"3\"/>\n",
                L + pw - 250, ly, L + pw - 225, ly, col);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", L + pw - 218, ly + 4);
        xml_text(f, z[k].label);
        fprintf(f, "</text>\n");
    }
#undef X
#undef Y
    fprintf(f, "</svg>\n");
    return fclose(f) == 0 ? 0 : FM_EIO;
}

static void series_free(series *z)
{
    free(z->t);
    free(z->y);
}

int fm_sim_write_svg(const fm_sim *s, const char *path)
{
    series z = {.last_write_s = s->last_write_us / 1e6};
    snprintf(z.label, sizeof z.label, "N=%" PRIu32 " %s seed %" PRIu64, s->cfg.nodes,
             topo_name(s->cfg.topology), s->cfg.seed);
    int rc = 0;
    for (uint32_t i = 0; !rc && i < s->nsamples; i++)
        rc = series_add(&z, s->samples[i].t_ms / 1e3, s->samples[i].coverage);
    char title[160];
    snprintf(title, sizeof title, "fieldmesh-sim: convergence, %" PRIu32 " nodes (%s, %s)",
             s->cfg.nodes, topo_name(s->cfg.topology), s->cfg.link.name);
    if (!rc)
        rc = plot_svg(path, &z, 1, title);
    series_free(&z);
    return rc;
}

static int read_csv(const char *path, series *z, char *err, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, cap, "%s: cannot open", path);
        return FM_EIO;
    }
    char line[FM_SIM_MAX_ARGS_TEXT + 256];
    int rc = 0;
    z->last_write_s = -1;
    snprintf(z->label, sizeof z->label, "%s", path);
    while (!rc && fgets(line, sizeof line, f)) {
        if (line[0] == '#') {
            const char *p = strstr(line, "nodes=");
            if (p)
                snprintf(z->label, sizeof z->label, "N=%ld", strtol(p + 6, NULL, 10));
            if ((p = strstr(line, "last_write_ms=")))
                z->last_write_s = strtod(p + 14, NULL) / 1e3;
            continue;
        }
        char *end;
        double t = strtod(line, &end);
        if (end == line || *end != ',')
            continue; /* the header */
        double y = strtod(end + 1, NULL);
        rc = series_add(z, t / 1e3, y);
    }
    fclose(f);
    if (!rc && z->n == 0) {
        snprintf(err, cap, "%s: no samples", path);
        rc = FM_EDECODE;
    }
    return rc;
}

int fm_sim_plot(const char *svg_path, const char *const *csv_paths, size_t n, char *err, size_t cap)
{
    series *z = calloc(n ? n : 1, sizeof *z);
    if (!z)
        return FM_ENOMEM;
    int rc = 0;
    for (size_t k = 0; !rc && k < n; k++)
        rc = read_csv(csv_paths[k], &z[k], err, cap);
    if (!rc)
        rc = plot_svg(svg_path, z, n, "fieldmesh-sim: coverage over time");
    for (size_t k = 0; k < n; k++)
        series_free(&z[k]);
    free(z);
    return rc;
}
