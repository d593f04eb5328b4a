# The flotilla image of ../../Dockerfile, assembled from a flotilla binary
# built on the host instead of in a golang image: same paths, user, data
# directory and entrypoint. The build context is made by compose/images
# (main.go): rootfs/ holds /usr/local/bin/flotilla, /tmp and the CA
# certificates, data/ the empty data directory.
FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 data/ /var/lib/flotilla/
USER 65532:65532
WORKDIR /var/lib/flotilla
ENV PATH=/usr/local/bin FLOTILLA_DATA=/var/lib/flotilla
ENTRYPOINT ["flotilla"]
CMD ["--help"]
