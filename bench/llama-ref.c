// llama-ref: reference outputs from llama.cpp for Ember's parity fixtures.
//   llama-ref logits MODEL TEXT_FILE      teacher-forced logits over the tokenized file, as JSON
//   llama-ref greedy MODEL PROMPT N       greedy (argmax) completion of N tokens, as JSON
//   llama-ref logits-ids MODEL IDS        every position's full logits for the given token ids, as JSON
//   llama-ref greedy-ids MODEL IDS N      greedy completion of exactly N tokens after the given ids
// The logits JSON keeps, for every position, the argmax, the 10 largest logits and the logits
// of every 491st vocabulary id, so that the fixture stays small while covering the whole vocabulary.
// IDS is a comma-separated list of token ids ("1,2,3"), fed as they are: nothing is tokenized and
// no BOS is added. logits-ids prints {"tokens": [...], "logits": [[n_vocab floats], ...]} with
// %.9g (exact float32); greedy-ids prints {"tokens": [...]} and does not stop at end-of-generation
// tokens, so that it matches a plain argmax loop.
// Environment: LLAMA_REF_THREADS (default 2); LLAMA_REF_KV=f32 for an f32 key/value cache without
// flash attention instead of llama.cpp's default f16 cache.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "llama.h"

static char *read_file(const char *path, int *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END); *len = (int)ftell(f); fseek(f, 0, SEEK_SET);
    char *buf = malloc(*len + 1);
    if (fread(buf, 1, *len, f) != (size_t)*len) { perror("read"); exit(1); }
    buf[*len] = 0; fclose(f);
    return buf;
}

static void json_string(const char *s, int n) {
    putchar('"');
    for (int i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static llama_token *parse_ids(const char *csv, int *n) {
    int cap = 1;
    for (const char *c = csv; *c; c++) cap += *c == ',';
    llama_token *ids = malloc(sizeof(llama_token) * cap);
    *n = 0;
    for (const char *c = csv; *c;) {
        char *end;
        long v = strtol(c, &end, 10);
        if (end == c) { fprintf(stderr, "bad token id list: %s\n", csv); exit(2); }
        ids[(*n)++] = (llama_token)v;
        c = end;
        while (*c == ',' || *c == ' ') c++;
    }
    return ids;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: llama-ref logits MODEL TEXT_FILE | greedy MODEL PROMPT N"
                        " | logits-ids MODEL IDS | greedy-ids MODEL IDS N\n");
        return 2;
    }
    const char *mode = argv[1];
    int by_ids = strcmp(mode, "logits-ids") == 0 || strcmp(mode, "greedy-ids") == 0;
    int greedy = strcmp(mode, "greedy") == 0 || strcmp(mode, "greedy-ids") == 0;
    if (greedy && argc < 5) { fprintf(stderr, "%s needs N\n", mode); return 2; }
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[2], mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[2]); return 1; }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);

    int n; llama_token *tokens;
    if (by_ids) {
        tokens = parse_ids(argv[3], &n);
        for (int i = 0; i < n; i++) {
            if (tokens[i] < 0 || tokens[i] >= n_vocab) { fprintf(stderr, "token id %d out of range\n", tokens[i]); return 2; }
        }
    } else {
        int text_len; char *text;
        if (strcmp(mode, "logits") == 0) text = read_file(argv[3], &text_len);
        else { text = argv[3]; text_len = (int)strlen(text); }
        tokens = malloc(sizeof(llama_token) * (text_len + 16));
        n = llama_tokenize(vocab, text, text_len, tokens, text_len + 16, false, false);
        if (n < 0) { fprintf(stderr, "tokenize failed\n"); return 1; }
    }
    if (n < 1) { fprintf(stderr, "no tokens\n"); return 2; }
    int n_gen = greedy ? atoi(argv[4]) : 0;

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n + n_gen + 16; cp.n_batch = cp.n_ctx; cp.n_ubatch = cp.n_ctx;
    const char *threads = getenv("LLAMA_REF_THREADS");  // default 2, the machine's core count
    cp.n_threads = cp.n_threads_batch = threads ? atoi(threads) : 2;
    const char *kv = getenv("LLAMA_REF_KV");  // "f32": f32 key/value cache, no flash attention (default: f16 cache)
    if (kv && strcmp(kv, "f32") == 0) {
        cp.type_k = cp.type_v = GGML_TYPE_F32;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create context\n"); return 1; }

    struct llama_batch batch = llama_batch_init(n + n_gen, 0, 1);
    for (int i = 0; i < n; i++) {
        batch.token[i] = tokens[i]; batch.pos[i] = i; batch.n_seq_id[i] = 1; batch.seq_id[i][0] = 0;
        batch.logits[i] = (n_gen == 0) || (i == n - 1);
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }

    if (strcmp(mode, "logits-ids") == 0) {
        printf("{\"tokens\": [");
        for (int i = 0; i < n; i++) printf(i ? ", %d" : "%d", tokens[i]);
        printf("],\n \"logits\": [\n");
        for (int i = 0; i < n; i++) {
            const float *l = llama_get_logits_ith(ctx, i);
            printf("  [");
            for (int v = 0; v < n_vocab; v++) printf(v ? ", %.9g" : "%.9g", l[v]);
            printf("]%s\n", i + 1 < n ? "," : "");
        }
        printf(" ]}\n");
    } else if (strcmp(mode, "greedy-ids") == 0) {
        printf("{\"prompt_tokens\": %d, \"tokens\": [", n);
        for (int g = 0; g < n_gen; g++) {
            const float *l = llama_get_logits_ith(ctx, -1);
            int best = 0;
            for (int v = 1; v < n_vocab; v++) if (l[v] > l[best]) best = v;
            printf(g ? ", %d" : "%d", best);
            if (g + 1 == n_gen) break;
            batch.n_tokens = 1; batch.token[0] = best; batch.pos[0] = n + g;
            batch.n_seq_id[0] = 1; batch.seq_id[0][0] = 0; batch.logits[0] = 1;
            if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
        }
        printf("]}\n");
    } else if (n_gen == 0) {
        printf("{\"tokens\": [");
        for (int i = 0; i < n; i++) printf(i ? ", %d" : "%d", tokens[i]);
        printf("],\n \"probe_stride\": 491,\n \"positions\": [\n");
        for (int i = 0; i < n; i++) {
            const float *l = llama_get_logits_ith(ctx, i);
            int top[10]; for (int k = 0; k < 10; k++) top[k] = -1;
            for (int v = 0; v < n_vocab; v++) {
                for (int k = 0; k < 10; k++) {
                    if (top[k] < 0 || l[v] > l[top[k]]) {
                        memmove(top + k + 1, top + k, sizeof(int) * (9 - k)); top[k] = v; break;
                    }
                }
            }
            printf("  {\"argmax\": %d, \"top\": [", top[0]);
            for (int k = 0; k < 10; k++) printf(k ? ", [%d, %.6f]" : "[%d, %.6f]", top[k], l[top[k]]);
            printf("], \"probe\": [");
            for (int v = 0; v < n_vocab; v += 491) printf(v ? ", %.6f" : "%.6f", l[v]);
            printf("]}%s\n", i + 1 < n ? "," : "");
        }
        printf(" ]}\n");
    } else {
        printf("{\"prompt_tokens\": %d, \"tokens\": [", n);
        char piece[256]; int out_len = 0; char *out = malloc(n_gen * 256 + 1);
        for (int g = 0; g < n_gen; g++) {
            const float *l = llama_get_logits_ith(ctx, -1);
            int best = 0;
            for (int v = 1; v < n_vocab; v++) if (l[v] > l[best]) best = v;
            printf(g ? ", %d" : "%d", best);
            int len = llama_token_to_piece(vocab, best, piece, sizeof piece, 0, false);
            if (len > 0) { memcpy(out + out_len, piece, len); out_len += len; }
            if (llama_vocab_is_eog(vocab, best)) break;
            batch.n_tokens = 1; batch.token[0] = best; batch.pos[0] = n + g;
            batch.n_seq_id[0] = 1; batch.seq_id[0][0] = 0; batch.logits[0] = 1;
            if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
        }
        printf("], \"text\": ");
        json_string(out, out_len);
        printf("}\n");
    }
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
