package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/banger/banger/cache"
	"github.com/banger/banger/image"
	"github.com/banger/banger/layout"
	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"
)

type imagePruneJSON struct {
	BytesFreed  int64              `json:"bytes_freed"`
	ImagesFreed int                `json:"images_freed"`
	BytesKept   int64              `json:"bytes_kept"`
	ImagesKept  int                `json:"images_kept"`
	DryRun      bool               `json:"dry_run"`
	ImagesDir   string             `json:"images_dir"`
	Removed     []image.ImageUsage `json:"removed"`
	DurationMS  int64              `json:"duration_ms"`
	Errors      []string           `json:"errors"`
}

func imagePruneCommand() *cli.Command {
	return &cli.Command{
		Name:  "prune",
		Usage: "remove flattened images by last use and by a size budget",
		UsageText: `banger image prune [--dry-run] [--older-than DURATION] [--max-size SIZE] [--all] [--json] [-q]

Removes the images selected (an image goes if either filter says so), least
recently used first, re-checking each one under the store lock first: an
image used since the plan stays. An image is used when it is pulled, found
up to date, inspected or its rootfs path asked for; uses are recorded at
most hourly. Leftovers of interrupted pulls and removals always go.

Flattened images are not re-pull avoidance, so with no filter prune
refuses: choose --older-than, --max-size or --all. --dry-run plans exactly
as the real run does and changes nothing.

Example:
   banger image prune --dry-run --older-than 14d
   banger image prune --older-than 14d --max-size 100GiB --no-wait`,
		Flags: withFlags(pathFlags(), lockFlags(), []cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "only report what would be freed"},
			&cli.StringFlag{Name: "older-than", Usage: "remove images not used within `DURATION` (Go duration or days: 36h, 14d)"},
			&cli.StringFlag{Name: "max-size", Usage: "remove least recently used images until the store holds at most `SIZE` (100GiB)"},
			&cli.BoolFlag{Name: "all", Aliases: []string{"a"}, Usage: "remove every image"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the IDs removed"},
			jsonFlag(),
		}),
		Action: withLayout(0, 0, "no arguments", func(c *cli.Context, l layout.Layout) error {
			p, err := parsePolicy(c.String("older-than"), c.String("max-size"))
			if err != nil {
				return err
			}
			policy := image.PrunePolicy{OlderThan: p.OlderThan, MaxSize: p.MaxSize, HasMaxSize: p.HasMaxSize, All: c.Bool("all")}
			dryRun := c.Bool("dry-run")
			start := time.Now()
			rep, err := openStore(c, l).Prune(c.Context, policy, dryRun)
			if errors.Is(err, image.ErrNoPruneFilter) {
				return usageErr{err}
			}
			if err != nil && !rep.Partial {
				return err
			}
			w := c.App.Writer
			switch {
			case c.Bool("json"):
				out := imagePruneJSON{
					BytesFreed: rep.Freed.Bytes, ImagesFreed: rep.Freed.Images,
					BytesKept: rep.Kept.Bytes, ImagesKept: rep.Kept.Images,
					DryRun: dryRun, ImagesDir: l.ImagesDir, Removed: rep.Removed,
					DurationMS: time.Since(start).Milliseconds(), Errors: []string{},
				}
				if out.Removed == nil {
					out.Removed = []image.ImageUsage{}
				}
				for _, e := range rep.Errors {
					out.Errors = append(out.Errors, oneLine(e.Error()))
				}
				if jerr := printJSON(w, out); jerr != nil {
					return jerr
				}
			case c.Bool("quiet"):
				for _, u := range rep.Removed {
					fmt.Fprintln(w, u.ID)
				}
			default:
				printPruneSummary(w, dryRun, "image", l.ImagesDir, rep.Freed.Bytes, rep.Freed.Images, rep.Kept.Bytes, rep.Kept.Images)
			}
			return err
		}),
	}
}

type dfCacheJSON struct {
	Dir              string           `json:"dir"`
	Blobs            int              `json:"blobs"`
	Bytes            int64            `json:"bytes"`
	OldestUse        *time.Time       `json:"oldest_use"`
	NewestUse        *time.Time       `json:"newest_use"`
	LeftoverBytes    int64            `json:"leftover_bytes"`
	ReclaimableBytes int64            `json:"reclaimable_bytes"` // by `banger image cache prune`
	BlobList         []cache.BlobInfo `json:"blob_list,omitempty"`
}

type dfImagesJSON struct {
	Dir              string             `json:"dir"`
	Images           int                `json:"images"`
	Names            int                `json:"names"`
	Bytes            int64              `json:"bytes"`
	OldestUse        *time.Time         `json:"oldest_use"`
	NewestUse        *time.Time         `json:"newest_use"`
	LeftoverBytes    int64              `json:"leftover_bytes"`
	ReclaimableBytes int64              `json:"reclaimable_bytes"` // by `banger image prune --all`
	ImageList        []image.ImageUsage `json:"image_list,omitempty"`
}

type dfJSON struct {
	Cache  dfCacheJSON  `json:"cache"`
	Images dfImagesJSON `json:"images"`
}

func utcPtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func dfCommand() *cli.Command {
	return &cli.Command{
		Name:  "df",
		Usage: "show the blob cache and the image store side by side, and what pruning would reclaim",
		UsageText: `banger df [-v] [--json]

One row for the blob cache, one for the image store: items, bytes, the
oldest and newest last use, and what ` + "`banger image cache prune`" + ` and
` + "`banger image prune --all`" + ` would reclaim (leftovers of interrupted
runs included). -v lists each image and each blob, most recently used
first. ` + "`banger system df`" + ` is the same command, for docker habits.

Example:
   banger df
   banger df --json | jq .images.reclaimable_bytes`,
		Flags: withFlags(pathFlags(), lockFlags(), []cli.Flag{
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "list each image and blob with its size and last use"},
			jsonFlag(),
		}),
		Action: withLayout(0, 0, "no arguments", func(c *cli.Context, l layout.Layout) error {
			inv, err := openCache(c, l).Inventory(c.Context)
			if err != nil {
				return err
			}
			st, err := openStore(c, l).Inventory(c.Context)
			if err != nil {
				return err
			}
			out := dfJSON{
				Cache: dfCacheJSON{
					Dir: l.CacheDir, Blobs: inv.Total.Blobs, Bytes: inv.Total.Bytes,
					OldestUse: utcPtr(inv.OldestUse), NewestUse: utcPtr(inv.NewestUse),
					LeftoverBytes: inv.Leftover.Bytes, ReclaimableBytes: inv.Total.Bytes + inv.Leftover.Bytes,
				},
				Images: dfImagesJSON{
					Dir: l.ImagesDir, Images: st.Total.Images, Names: st.Names, Bytes: st.Total.Bytes,
					OldestUse: utcPtr(st.OldestUse), NewestUse: utcPtr(st.NewestUse),
					LeftoverBytes: st.LeftoverBytes, ReclaimableBytes: st.Total.Bytes + st.LeftoverBytes,
				},
			}
			verbose := c.Bool("verbose")
			if verbose {
				out.Cache.BlobList, out.Images.ImageList = inv.Blobs, st.Images
				if out.Cache.BlobList == nil {
					out.Cache.BlobList = []cache.BlobInfo{}
				}
				if out.Images.ImageList == nil {
					out.Images.ImageList = []image.ImageUsage{}
				}
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, out)
			}
			use := func(t *time.Time) string {
				if t == nil {
					return "-"
				}
				return humanize.Time(*t)
			}
			tw := newTable(c.App.Writer)
			fmt.Fprintln(tw, "TYPE\tCOUNT\tNAMES\tSIZE\tOLDEST USE\tNEWEST USE\tRECLAIMABLE\tBY\tDIR")
			fmt.Fprintf(tw, "cache\t%d blob(s)\t-\t%s\t%s\t%s\t%s\tbanger image cache prune\t%s\n", out.Cache.Blobs, humanize.IBytes(uint64(out.Cache.Bytes)), use(out.Cache.OldestUse), use(out.Cache.NewestUse), humanize.IBytes(uint64(out.Cache.ReclaimableBytes)), l.CacheDir)
			fmt.Fprintf(tw, "images\t%d image(s)\t%d\t%s\t%s\t%s\t%s\tbanger image prune --all\t%s\n", out.Images.Images, out.Images.Names, humanize.IBytes(uint64(out.Images.Bytes)), use(out.Images.OldestUse), use(out.Images.NewestUse), humanize.IBytes(uint64(out.Images.ReclaimableBytes)), l.ImagesDir)
			if err := tw.Flush(); err != nil || !verbose {
				return err
			}
			fmt.Fprintln(c.App.Writer)
			tw = newTable(c.App.Writer)
			fmt.Fprintln(tw, "IMAGE ID\tNAMES\tSIZE\tLAST USE")
			for _, u := range st.Images {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", image.ShortID(u.ID), strings.Join(u.Names, ", "), humanize.IBytes(uint64(u.Size)), u.LastUse.Local().Format(time.DateTime))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer)
			tw = newTable(c.App.Writer)
			fmt.Fprintln(tw, "BLOB DIGEST\tSIZE\tLAST USE")
			for _, b := range inv.Blobs {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", b.Digest, humanize.IBytes(uint64(b.Size)), b.LastUse.Local().Format(time.DateTime))
			}
			return tw.Flush()
		}),
	}
}

// systemCommand is hidden: `banger system df` is there for docker habits,
// and does what `banger df` does.
func systemCommand() *cli.Command {
	df := dfCommand()
	df.HelpName = "banger system df"
	return &cli.Command{
		Name:        "system",
		Usage:       "docker-style spelling of banger df",
		Hidden:      true,
		Subcommands: []*cli.Command{df},
	}
}
